"""The template process of ``mode="process"``: ``python -m uvicorn_testserver._runners.template``.

A test process starts one (see `uvicorn_testserver._runners.child_process`). It imports
what every child needs once (uvicorn with the modules its default options load, asyncio,
this library, Starlette's core, coverage if the test process measures it, the modules
named in ``UVICORN_TESTSERVER_PRELOAD``), then forks one child per server. It never starts a
thread or an event loop, so it is always forked single-threaded; it checks that its
preloads did not start one either.

It talks with the test process over a sequenced-packet socket pair. The first message
says what to import (the test process's ``sys.path``, the preloads, whether to import
coverage); the template answers ``{"ready": ...}`` or ``{"failed": reason}``. Each later
message is ``fork`` with four descriptors: the listening socket, the child's end of
the control channel, the write end of the pipe for its output, and a *status* socket,
on which the template answers ``{"pid": n}`` with a pidfd of the child (or
``{"error": ...}``), and, once it has reaped the child, ``{"exit": code}`` (negative:
killed by that signal, as `subprocess.Popen.returncode`).

A forked child becomes what ``python -m uvicorn_testserver._runners.child`` would be: a
session of its own, stdin from /dev/null, stdout and stderr into its pipe, Python's
default signal handling, none of the template's descriptors. `uvicorn_testserver._runners.child.run`
then reads its configuration and, before anything is imported for the app, takes the
environment, working directory and ``sys.path`` the test process has at this start.
Its exit is a normal interpreter exit (atexit handlers, non-daemon threads, buffers).

End-of-file from the test process (it has exited, even by SIGKILL) ends the template
at once; its children see their own control channels close and stop by themselves.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from uvicorn_testserver._core.uvicorn_internals import import_serving_modules
from uvicorn_testserver._runners import child

# sys.path as the interpreter set it up, before the test process's entries: where a forked child starts from.
_STARTUP_PATH = list(sys.path)
# Starlette is a dependency of this library (its demo app) and the base of FastAPI: most apps import these.
_STARLETTE = ("starlette.applications", "starlette.requests", "starlette.responses", "starlette.routing")
_FORK_FDS = 4
# A failure in a forked child before it could become one (it must never return into the template's loop).
_EXIT_NOT_BORN = 71


class Template:
    """The fork loop: forks children on request and reports their exits, until the test process is gone."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.children: dict[int, tuple[int, socket.socket]] = {}  # pidfd: (pid, status socket)

    def serve(self) -> Callable[[], int] | None:
        """Answer the test process until it has gone (None), or, in a forked child, return what serves."""
        hello = json.loads(self.conn.recv(1 << 20) or b"{}")
        try:
            ready = warm_up(hello)
        except BaseException as exc:  # noqa: BLE001 - the test process says why and spawns instead
            self.conn.send(json.dumps({"failed": str(exc) if isinstance(exc, _Unusable) else repr(exc)}).encode())
            return None
        self.conn.send(json.dumps({"ready": ready}).encode())
        while True:
            listening = self.conn.fileno()
            poller = select.poll()  # not select(): descriptors passed from a busy test process may be past 1024
            for fd in (listening, *self.children):
                poller.register(fd, select.POLLIN)
            readable = [fd for fd, _ in poller.poll()]
            for fd in readable:
                if fd in self.children:
                    self._reap(fd)
            if listening in readable:
                message, fds, _, _ = socket.recv_fds(self.conn, 64, _FORK_FDS)
                if not message and not fds:
                    return None  # the test process has gone
                if message == b"fork" and len(fds) == _FORK_FDS:
                    forked = self._fork(*fds)
                    if forked is not None:
                        return forked
                else:
                    for fd in fds:
                        os.close(fd)

    def _fork(self, listen_fd: int, control_fd: int, output_fd: int, status_fd: int) -> Callable[[], int] | None:
        status = socket.socket(fileno=status_fd)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # nothing is buffered twice
        try:
            pid = os.fork()
        except OSError as exc:
            _send(status, {"error": f"could not fork: {exc}"})
            pid = -1
        if pid == 0:
            return self._become_child(listen_fd, control_fd, output_fd, status)
        for fd in (listen_fd, control_fd, output_fd):
            os.close(fd)
        if pid < 0:
            status.close()
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)  # not reaped yet: the pid is still this child's
            os.waitpid(pid, 0)
            _send(status, {"error": f"could not open a pidfd of the child: {exc}"})
            status.close()
            return None
        with contextlib.suppress(OSError):  # a test process that gave up on the start closes the channel too
            socket.send_fds(status, [json.dumps({"pid": pid}).encode()], [pidfd])
        self.children[pidfd] = (pid, status)
        return None

    def _reap(self, pidfd: int) -> None:
        pid, status = self.children.pop(pidfd)
        _, wait_status = os.waitpid(pid, 0)
        _send(status, {"exit": os.waitstatus_to_exitcode(wait_status)})
        status.close()
        os.close(pidfd)

    def _become_child(
        self, listen_fd: int, control_fd: int, output_fd: int, status: socket.socket
    ) -> Callable[[], int]:
        try:
            os.setsid()
            self.conn.close()
            for pidfd, (_, sibling) in self.children.items():
                sibling.close()
                os.close(pidfd)
            self.children.clear()
            status.close()
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            os.close(output_fd)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.argv = [child.__file__, "--listen-fd", str(listen_fd), "--control-fd", str(control_fd)]
        except BaseException:  # noqa: BLE001 - whatever happens, this process must not go on as a template
            os._exit(_EXIT_NOT_BORN)
        return lambda: child.run(listen_fd, control_fd, prepare=take_the_start)


class _Unusable(Exception):
    """The template cannot fork safely, or a preload failed: the reason is the message."""


def warm_up(hello: dict[str, Any]) -> dict[str, Any]:
    """Import what every child needs, and the preloads; check that forking stays safe."""
    for entry in reversed(hello.get("sys_path", [])):
        if entry not in sys.path:
            sys.path.insert(1, entry)  # as the child does: the preloads import from where the test process does
    import_serving_modules()
    for name in _STARLETTE:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if hello.get("coverage"):
        importlib.import_module("coverage")  # imported, not started: each child measures its own run
    for name in hello.get("preload", []):
        try:
            importlib.import_module(name)
        except BaseException as exc:  # SystemExit too: said to the test process
            raise _Unusable(f"importing {name!r} from UVICORN_TESTSERVER_PRELOAD raised {exc!r}") from exc
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        raise _Unusable(
            f"after its imports it runs {threads} threads, and forking a process with threads is unsafe; a module "
            "in UVICORN_TESTSERVER_PRELOAD starts one"
        )
    os.close(os.pidfd_open(os.getpid()))  # Linux 5.3 or later
    # What is imported now lives as long as any child: its collector need not walk it (nor copy its pages).
    gc.collect()
    gc.freeze()
    return {"pid": os.getpid()}


def take_the_start(config: dict[str, Any]) -> str | None:
    """In a forked child: the test process's environment, working directory and ``sys.path`` at this start, as
    a spawned child gets them; or why not."""
    start = config["start"]
    try:
        os.chdir(start["cwd"])
    except OSError as exc:
        return f"cannot start the child process for {config['app']}: {exc}. Check cwd={start['cwd']!r}"
    os.environ.clear()
    os.environ.update(start["env"])
    time.tzset()  # a fresh interpreter reads TZ as it starts
    # `python -m` puts the working directory first; `child.serve` adds the test process's entries after it.
    sys.path[:] = _STARTUP_PATH if sys.flags.safe_path else [os.getcwd(), *_STARTUP_PATH[1:]]
    importlib.invalidate_caches()  # files created since the template looked are found
    return None


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the test process has gone: nobody to tell
        sock.send(json.dumps(message).encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uvicorn_testserver._runners.template", description=__doc__)
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # in a session of its own; Ctrl-C is the test process's to handle
    conn = socket.socket(fileno=args.fd)
    conn.set_inheritable(False)
    serve = Template(conn).serve()
    if serve is None:
        return 0
    end_forked(serve)


def end_forked(serve: Callable[[], int]) -> NoReturn:
    """Run a forked child's `serve`, then end it as `multiprocessing` ends its forked children.

    As at any interpreter exit, non-daemon threads are waited for, atexit handlers run
    and stdout and stderr are flushed; the interpreter's teardown of every module is
    skipped (it costs a forked process tens of milliseconds in copy-on-write faults).
    """
    try:
        code = serve()
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001 - reported as the interpreter reports it, then the same exit
        traceback.print_exc()
        code = 1
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)  # as the interpreter prints sys.exit("message")
    return 1


if __name__ == "__main__":
    sys.exit(main())

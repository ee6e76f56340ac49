"""How process mode creates its child: forked from a warm template process, or a fresh interpreter.

A fresh interpreter (*spawn*: ``python -m uvicorn_testserver._runners.child``) pays for
the interpreter's start and the imports of uvicorn and this library, a few hundred
milliseconds per server. So the first process-mode start of a test process starts a
*template* (`uvicorn_testserver._runners.template`) that imports them (and Starlette, a
dependency of this library) once, and every start forks one child from it, as
`multiprocessing`'s forkserver does: a child imports only what the app needs besides.
The forked child is a process of its own, in a session of its own, signalled directly
(through a pidfd) and reaped by the template, which reports its exit code here.

What a child gets from where: the environment, working directory and ``sys.path`` are
the test process's at the start (with ``env=`` and ``cwd=`` applied), set in the child
before it imports anything for the app, so a change the test made after the template
started reaches it. The interpreter, what it read as it started (``PYTHON*``,
``LC_*``/``LANG``, ``LD_*``) and the preloaded modules are the template's: a start whose
variables of that kind differ from the template's spawns instead.

`start_child` picks the way for each start:

* ``UVICORN_TESTSERVER_PROCESS_START=spawn`` opts out: every child is spawned;
* spawn where the template cannot be used: not Linux, coverage started by
  ``COVERAGE_PROCESS_START``/``COVERAGE_PROCESS_CONFIG`` (the interpreter measures
  itself from its start), the variables above differ, or coverage is measured and the
  template preloaded modules of the user's (their import would not be measured);
* spawn while the template is still importing after half the start's ``startup_timeout``
  (10 s at most; it goes on, for the next start);
* spawn, from then on, once the template has failed (it could not start, its
  preloads failed or started a thread, it died): said once, as a warning in the log.

``UVICORN_TESTSERVER_PRELOAD`` names modules (comma-separated) the template imports too,
so no child pays for them: the frameworks the app imports, not the app itself if its
import reads the environment or the working directory.

The template exits at once when the test process's end of their socket pair closes: at
interpreter exit (an atexit hook closes it and reaps the template), or when the test
process is killed. Its children see their own control channels close and stop by themselves.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Literal, Protocol

from uvicorn_testserver._core.logs import ServerLog, capture_into, harness_logger
from uvicorn_testserver._core.run import Launch
from uvicorn_testserver._core.settings import ServerSettings
from uvicorn_testserver._core.sockets import readable
from uvicorn_testserver._core.uvicorn_internals import StartupFailed

__all__ = [
    "EXIT_UNKNOWN",
    "PRELOAD_ENV",
    "START_ENV",
    "ChildProcess",
    "ForkedChild",
    "SpawnedChild",
    "start_child",
]

#: Opts out of the template: ``spawn`` (or ``template``, the default).
START_ENV = "UVICORN_TESTSERVER_PROCESS_START"
#: Modules the template imports for every child, comma-separated.
PRELOAD_ENV = "UVICORN_TESTSERVER_PRELOAD"
StartMethod = Literal["template", "spawn"]
_START_METHODS: tuple[StartMethod, ...] = ("template", "spawn")

#: The exit code of a forked child whose template died before it could report one.
EXIT_UNKNOWN = 255

# Read by the interpreter (or a .pth hook) as it starts: a forked child would keep the template's.
_STARTUP_PREFIXES = ("PYTHON", "LC_", "LD_", "COVERAGE_PROCESS_")
_STARTUP_NAMES = frozenset({"LANG"})
_TEMPLATE_CLOSE_WAIT = 5.0
_TEMPLATE_WAIT = 10.0
# How long the template may take to import everything before it is given up (a loaded CI machine is slow).
_TEMPLATE_START_LIMIT = 60.0
_EXIT_AFTER_EOF = 1.0  # a template that closed its end exits within this
_SAID_LINES = 3  # of what a template that died printed: a traceback's last lines say what it was
_MESSAGE_SIZE = 65536


class ChildProcess(Protocol):
    """What `ProcessRun` uses of its child: the part of `subprocess.Popen` both ways provide."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> IO[bytes] | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def release(self) -> None:
        """Close what the handle holds (the output pipe, ...) once the child has ended or been given up on."""


class SpawnedChild(subprocess.Popen[bytes]):
    """A child in a fresh interpreter: `subprocess.Popen` as it is."""

    def release(self) -> None:
        if self.stdout is not None:
            self.stdout.close()


class ForkedChild:
    """A child forked by the template, with `subprocess.Popen`'s methods.

    Signals go through a pidfd, so they never reach a process that got the pid later.
    The template reaps the child and sends its exit code on the *status* socket, then
    closes it; should the template die first, the pidfd still tells when the child has
    exited (its code is then `EXIT_UNKNOWN`). Thread-safe.
    """

    def __init__(self, pid: int, pidfd: int, status: socket.socket, stdout: IO[bytes]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout: IO[bytes] | None = stdout
        self._pidfd = pidfd
        self._status = status
        self._template_gone = False
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None and self._pidfd >= 0:
                self._read_exit()
            return self.returncode

    def _read_exit(self) -> None:
        if not self._template_gone:
            try:
                message = self._status.recv(_MESSAGE_SIZE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if message:
                self.returncode = int(json.loads(message)["exit"])
                return
            self._template_gone = True
        if readable(self._pidfd, 0):
            self.returncode = EXIT_UNKNOWN

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if (remaining is not None and remaining <= 0) or self._pidfd < 0:  # released: nothing to wait on
                raise subprocess.TimeoutExpired(f"child process {self.pid}", timeout or 0.0)
            # The template closes the status socket after the exit code: readable until the handle is released.
            with contextlib.suppress(OSError, ValueError):
                readable(self._pidfd if self._template_gone else self._status, remaining)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it has just exited
                signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def release(self) -> None:
        with self._lock:
            if self.stdout is not None:
                self.stdout.close()
            self._status.close()
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1


class _TemplateGone(Exception):
    """The template cannot fork this child, and nothing was forked: spawn it instead."""


class _Template:
    """The test process's side of the template process: start it, ask it to fork, close it."""

    def __init__(
        self, process: subprocess.Popen[bytes], conn: socket.socket, output: IO[bytes], preloaded: list[str]
    ) -> None:
        self.process = process
        self._output = output  # what the template itself printed (a crash's traceback), for the warning
        self.startup_env = _startup_variables(os.environ)
        self.preloaded = preloaded
        self.ready = False
        self._started_at = time.monotonic()
        self._conn = conn
        self._lock = threading.Lock()
        self._waiting = threading.Lock()  # one start reads the template's answer; the others wait for it
        self._failure = ""  # why it could not be used, for the starts that waited meanwhile

    @classmethod
    def launch(cls, *, coverage: bool) -> _Template:
        """Start the template process and tell it what to import; raise `_TemplateGone` if it cannot start."""
        preload = [] if coverage else _preload_list()  # while measuring, the app's modules are imported in the child
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "uvicorn_testserver._runners.template", "--fd", str(theirs.fileno())]
        output = tempfile.TemporaryFile()  # noqa: SIM115 - the template's lifetime; a file: nobody drains it
        try:
            process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # never a target of the terminal's Ctrl-C
            )
        except OSError as exc:
            ours.close()
            output.close()
            raise _TemplateGone(f"it could not be started: {exc}") from exc
        finally:
            theirs.close()
        template = cls(process, ours, output, preload)
        hello = {"sys_path": [os.path.abspath(entry) for entry in sys.path], "preload": preload, "coverage": coverage}
        try:
            ours.sendall(json.dumps(hello).encode())
        except OSError as exc:
            template.close()
            raise _TemplateGone(f"it could not be reached: {exc}") from exc
        return template

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` until the template has imported everything: False if it is still importing; raise
        `_TemplateGone` if it failed, exited, or is not ready `_TEMPLATE_START_LIMIT` after it started."""
        if self.ready:
            return True
        deadline = time.monotonic() + timeout
        if not self._waiting.acquire(timeout=max(0.0, timeout)):
            return self.ready
        try:
            return self.ready or self._read_ready(deadline)
        finally:
            self._waiting.release()

    def _read_ready(self, deadline: float) -> bool:
        if self._failure:  # found by a start that waited before this one
            raise _TemplateGone(self._failure)
        limit = self._started_at + _TEMPLATE_START_LIMIT
        try:
            answer = _receive(self._conn, max(0.0, min(deadline, limit) - time.monotonic()))
        except EOFError:  # it is exiting: its exit code comes a moment later
            try:
                code: int | None = self.process.wait(_EXIT_AFTER_EOF)
            except subprocess.TimeoutExpired:
                code = None
            ended = "closed its end" if code is None else f"exited with code {code}"
            answer = {"failed": f"it {ended} as it started{self._said()}"}
        except (OSError, ValueError) as exc:  # ValueError: closed here meanwhile (at interpreter exit)
            answer = {"failed": f"it could not be reached: {exc}"}
        if answer is None:
            if self.process.poll() is None and time.monotonic() - self._started_at < _TEMPLATE_START_LIMIT:
                return False
            answer = {"failed": f"it was not ready {_TEMPLATE_START_LIMIT:.0f}s after it started"}
        if "ready" not in answer:
            self._failure = str(answer.get("failed", answer))
            self.close()
            raise _TemplateGone(self._failure)
        self.ready = True
        return True

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def fork(self, launch: Launch, channel: socket.socket) -> ForkedChild:
        """A child forked from the template, with `launch`'s socket and `channel`, its end of the control channel.

        Raises `_TemplateGone` if the request could not be sent (nothing was forked), `StartupFailed` if the
        template failed after it got it.
        """
        settings = launch.settings
        status, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        read_end, write_end = os.pipe()
        try:
            self._request([launch.sock.fileno(), channel.fileno(), write_end, theirs.fileno()])
        except _TemplateGone:
            status.close()
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
            theirs.close()
        try:
            answered = readable(status, settings.startup_timeout)
            message, fds, _, _ = socket.recv_fds(status, _MESSAGE_SIZE, 1) if answered else (b"", [], 0, None)
            answer = json.loads(message) if message else {}
            if "pid" not in answer or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                what = "did not fork it within startup_timeout" if not answered else "ended while forking it"
                raise StartupFailed(
                    f"cannot start the child process for {settings.app_name}: the template process "
                    f"{answer.get('error') or what}"
                )
        except BaseException:
            status.close()
            os.close(read_end)
            raise
        return ForkedChild(int(answer["pid"]), fds[0], status, os.fdopen(read_end, "rb"))

    def _request(self, fds: list[int]) -> None:
        with self._lock:
            code = self.process.poll()
            if code is not None:
                raise _TemplateGone(f"it has exited (code {code}){self._said()}")
            try:
                socket.send_fds(self._conn, [b"fork"], fds)
            except OSError as exc:
                raise _TemplateGone(f"it could not be reached: {exc}") from exc

    def _said(self) -> str:
        """The last lines the template printed, as the end of a reason (``"; it printed: ..."``), or ''."""
        try:
            self._output.seek(0)
            lines = self._output.read().decode(errors="replace").strip().splitlines()[-_SAID_LINES:]
        except (OSError, ValueError):  # closed
            return ""
        return "; it printed: " + " | ".join(line.strip() for line in lines) if lines else ""

    def close(self) -> None:
        """End the template (it exits at end-of-file) and reap it. Idempotent."""
        with self._lock:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
            self._conn.close()
        try:
            self.process.wait(_TEMPLATE_CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._output.close()

    def forget(self) -> None:
        """In a forked copy of the test process: let go of the channel, which is the original's."""
        self._conn.close()
        self._output.close()
        self.process.returncode = 0  # not this process's child: nothing to wait for, nothing to warn about


class _Templates:
    """The test process's one template, started on first use, and why it can no longer be used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._template: _Template | None = None
        self._failed = ""

    def get(self, *, coverage: bool, timeout: float, log: ServerLog) -> _Template | None:
        """The template, started on first use, once it is ready; None if it is not ready within `timeout` (it
        goes on importing for a later start) or cannot be used (said once in `log`)."""
        with self._lock:
            if self._failed:
                return None
            if self._template is None:
                try:
                    self._template = _Template.launch(coverage=coverage)
                except _TemplateGone as exc:
                    self._give_up(str(exc), log)
                    return None
                atexit.register(self.close)
            template = self._template
        try:  # not under the lock: concurrent starts each wait their own time, not one after the other's
            return template if template.wait_ready(timeout) else None
        except _TemplateGone as exc:
            self.failed(template, str(exc), log)
            return None

    def failed(self, template: _Template, reason: str, log: ServerLog) -> None:
        with self._lock:
            if self._template is template:
                self._template = None
                template.close()
                self._give_up(reason, log)

    def _give_up(self, reason: str, log: ServerLog) -> None:
        self._failed = reason
        with capture_into(log):
            harness_logger.warning(
                "Process mode spawns a fresh interpreter for each child from now on, a few hundred milliseconds "
                "per start: its template process cannot be used (%s). Set %s=spawn to choose this and not see "
                "this warning.",
                reason,
                START_ENV,
            )

    def close(self) -> None:
        with self._lock:
            template, self._template = self._template, None
        if template is not None:
            template.close()

    def forget(self) -> None:
        template, self._template = self._template, None
        self._lock = threading.Lock()  # another thread may have held it as the process forked
        if template is not None:
            template.forget()


_templates = _Templates()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_templates.forget)


def start_child(
    launch: Launch, channel: socket.socket, *, coverage: bool
) -> tuple[ChildProcess, dict[str, Any] | None]:
    """Start the child that serves `launch.sock` and talks on `channel`; forked from the template where it can be.

    Returns the child and what a forked child must apply before it imports the app
    (``{"env": ..., "cwd": ...}``), None for a spawned one. `coverage`: the test process
    measures coverage. Raises `StartupFailed` if no child could be started, and
    `ValueError` for a bad ``UVICORN_TESTSERVER_PROCESS_START``.
    """
    settings = launch.settings
    env = {**os.environ, **(settings.env or {})}
    if start_method() == "template" and _can_fork() and not _measures_itself(os.environ):
        # A template still importing after half the start's time (10 s at most): this child is spawned.
        wait = min(settings.startup_timeout / 2, _TEMPLATE_WAIT)
        template = _templates.get(coverage=coverage, timeout=wait, log=launch.log)
        if (
            template is not None
            and _startup_variables(env) == template.startup_env
            and not (coverage and template.preloaded)
        ):
            cwd = os.path.abspath(settings.cwd) if settings.cwd is not None else os.getcwd()
            try:
                return template.fork(launch, channel), {"env": env, "cwd": cwd}
            except _TemplateGone as exc:
                _templates.failed(template, str(exc), launch.log)
            except StartupFailed as exc:
                _templates.failed(template, exc.reason, launch.log)
                raise
    return spawn(settings, launch.sock, channel), None


def spawn(settings: ServerSettings, listener: socket.socket, channel: socket.socket) -> SpawnedChild:
    """``python -m uvicorn_testserver._runners.child`` in a session of its own; raise `StartupFailed` if it cannot."""
    env = None if settings.env is None else {**os.environ, **settings.env}
    command = [sys.executable, "-m", "uvicorn_testserver._runners.child"]
    command += ["--listen-fd", str(listener.fileno()), "--control-fd", str(channel.fileno())]
    try:
        return SpawnedChild(
            command,
            pass_fds=(listener.fileno(), channel.fileno()),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=settings.cwd,
            start_new_session=True,  # Ctrl-C in a terminal reaches the test, which stops its children itself
        )
    except OSError as exc:
        raise StartupFailed(
            f"cannot start the child process for {settings.app_name}: {exc}. Check cwd={settings.cwd!r} and "
            f"that {sys.executable} runs"
        ) from exc


def start_method() -> StartMethod:
    """``UVICORN_TESTSERVER_PROCESS_START``: ``template`` (the default) or ``spawn``; ValueError otherwise."""
    value = os.environ.get(START_ENV, "").strip().lower() or "template"
    for method in _START_METHODS:
        if value == method:
            return method
    raise ValueError(
        f"{START_ENV}={os.environ[START_ENV]!r} is not a start method of process mode: use 'template' (the "
        "default, a child forked from a warm template process) or 'spawn' (a fresh interpreter for each child)."
    )


def _can_fork() -> bool:
    # Linux only: fork is unsafe on macOS (its system libraries), and the template needs pidfds (Linux 5.3).
    return sys.platform == "linux" and hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def _measures_itself(env: Any) -> bool:
    return any(name.startswith("COVERAGE_PROCESS_") for name in env)


def _startup_variables(env: Any) -> dict[str, str]:
    return {name: env[name] for name in env if name in _STARTUP_NAMES or name.startswith(_STARTUP_PREFIXES)}


def _preload_list() -> list[str]:
    return [name.strip() for name in os.environ.get(PRELOAD_ENV, "").split(",") if name.strip()]


def _receive(sock: socket.socket, timeout: float) -> dict[str, Any] | None:
    """One JSON message from `sock` within `timeout`, or None if nothing came; raise `EOFError` if it closed."""
    if not readable(sock, timeout):
        return None
    message = sock.recv(_MESSAGE_SIZE)
    if not message:
        raise EOFError
    answer: dict[str, Any] = json.loads(message)
    return answer

"""``mode="process"``: the app runs in a child Python process, the parent keeps the harness.

The parent binds the listening socket (so the port is race-free, as in thread mode)
and passes its descriptor to ``python -m uvicorn_testserver._child`` together with one
end of a socket pair, the control channel (see `uvicorn_testserver._child`). Readiness,
startup failures, log records and the app's unhandled exceptions come back over the
channel; the child's stdout and stderr (merged) are drained by a thread into a bounded
buffer, `ProcessServer.output`, whose tail is in every error.

Stopping closes the parent's end of the channel: the child shuts down gracefully (and
forces its own exit if that overruns); if it still runs, the parent sends SIGTERM, then
SIGKILL, and always reaps it. If the parent dies, the channel closes too and the child
stops on its own, so no orphan is left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any, Literal, Self

from uvicorn_testserver._errors import ServerShutdownError, ServerStartupError, ServerStateError
from uvicorn_testserver._logs import LOGGER_NAMES
from uvicorn_testserver._server import _FORCE_GRACE, _STOP_MARGIN, LogLevel, UvicornTestServer, _running
from uvicorn_testserver._uvicorn import AppType

__all__ = ["ChildAppError", "ProcessServer"]

#: Exit code of a child whose watchdog had to force the exit (see `uvicorn_testserver._child`).
_EXIT_FORCED = 70
_OUTPUT_LINES = 2000
_OUTPUT_TAIL = 20
# How long a child that reported a failed start may take to exit (interpreter teardown on a busy machine).
_EXIT_WAIT = 10.0
# How much later than its own deadline a child may force its exit before it is signalled.
_LATE_CHILD = 5.0


class ChildAppError(Exception):
    """An exception the app raised inside the child process, carried back as text.

    ``str()`` is the child's full formatted traceback; `type_name` is the exception's
    class (``"ValueError"``, ``"httpx.ConnectError"``) and `message` its ``str()``.
    The exception object itself cannot cross the process boundary.
    """

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(traceback or f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> ChildAppError:
        return cls(str(event["type"]), str(event["message"]), str(event["traceback"]))


class _Output:
    """The child's merged stdout/stderr, the last `_OUTPUT_LINES` lines, thread-safe."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=_OUTPUT_LINES)
        self._partial = ""
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._lines.clear()
            self._partial = ""

    def feed(self, text: str) -> None:
        with self._lock:
            *complete, self._partial = (self._partial + text).split("\n")
            self._lines.extend(complete)

    def text(self) -> str:
        with self._lock:
            return "\n".join([*self._lines, self._partial] if self._partial else self._lines)

    def tail(self, lines: int = _OUTPUT_TAIL) -> str:
        return "\n".join(self.text().splitlines()[-lines:])


class _ChildFailed(Exception):
    def __init__(self, reason: str, cause: ChildAppError | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


@dataclass(eq=False)
class _ProcessRun:
    """One start() .. stop() in process mode: the child and everything that reads from it."""

    process: subprocess.Popen[bytes]
    control: socket.socket
    cleanup: ExitStack
    ready: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)
    stopped: threading.Event = field(default_factory=threading.Event)
    forced: threading.Event = field(default_factory=threading.Event)
    closing: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


class ProcessServer(UvicornTestServer):
    """`UvicornTestServer` with ``mode="process"``: the app runs in a child Python process.

    Made by ``UvicornTestServer("package.module:app", mode="process")``, or constructed
    directly as ``ProcessServer("package.module:app")`` (then type checkers know its
    extras). The API is the same (``base_url``, ``start()``, ``stop()``, ``errors``,
    ``log``, context managers), plus `output`, `pid` and `returncode`. `app` must be an import string (the child
    imports it); ``factory=True`` and every JSON-serialisable uvicorn option work.
    `env` adds environment variables to the child's (a copy of the test process's),
    `cwd` sets its working directory. The child also gets the test process's
    ``sys.path``, so whatever the test can import, the child can.

    `errors` holds `ChildAppError`s (the traceback as text), and ``log`` the child's
    uvicorn records, re-emitted to the test process's logging (so ``caplog`` sees them).
    """

    def __init__(
        self,
        app: AppType,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mode: Literal["thread", "process"] = "process",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ssl: bool = False,
        health_path: str | None = None,
        startup_timeout: float = 30.0,  # a fresh interpreter imports uvicorn and the app: slow on a busy CI machine
        shutdown_timeout: float = 5.0,
        raise_server_exceptions: bool = True,
        log_level: LogLevel = "warning",
        **uvicorn_options: Any,
    ) -> None:
        if mode != "process":
            raise ValueError(f"ProcessServer always runs the app in a child process; mode={mode!r} does not apply.")
        if not isinstance(app, str):
            raise TypeError(
                f"mode='process' imports the app in a child process, so it needs an import string such as "
                f"'package.module:app', not the object {type(app).__name__} {app!r}. Move the app into an "
                "importable module, or use mode='thread' for app objects."
            )
        for name, value in uvicorn_options.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"mode='process' sends uvicorn options to the child process as JSON, and {name}={value!r} "
                    "is not JSON-serialisable; pass an import string or a plain value instead."
                ) from None
        super().__init__(
            app,
            host,
            port,
            mode="process",
            ssl=ssl,
            health_path=health_path,
            startup_timeout=startup_timeout,
            shutdown_timeout=shutdown_timeout,
            raise_server_exceptions=raise_server_exceptions,
            log_level=log_level,
            **uvicorn_options,
        )
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._output = _Output()
        self._prun: _ProcessRun | None = None
        self._pid: int | None = None
        self._returncode: int | None = None

    # -- what the child did -----------------------------------------------------------

    @property
    def output(self) -> str:
        """The child's stdout and stderr since the last `start()` (merged, the last 2000 lines)."""
        return self._output.text()

    @property
    def pid(self) -> int | None:
        """The process id of the current (or last) child, None before the first `start()`."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        """The exit code of the last child once it has ended (negative: killed by that signal), else None."""
        return self._returncode

    @property
    def is_running(self) -> bool:
        """True between a successful `start()` and `stop()`, while the child process lives."""
        run = self._prun
        return run is not None and run.process.poll() is None and run.ready.done() and not run.stopped.is_set()

    def __repr__(self) -> str:
        port = self._port or "?"
        state = "running" if self.is_running else "stopped"
        return f"<UvicornTestServer mode=process app={self._app_name()} {self._host}:{port} pid={self._pid} {state}>"

    # -- start --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the child, block until it serves; return the server.

        Returns once the child reported that lifespan startup completed and it serves
        the socket (and `health_path`, if set, answered 2xx). Raises `ServerStartupError`
        with the reason, the app's traceback (a chained `ChildAppError`), the exit code
        and the child's output if the child fails, exits, or is not ready within
        `startup_timeout`; the child is then stopped and reaped. Raises
        `ServerStateError` if already running.
        """
        with self._lock:
            if self._prun is not None:
                raise ServerStateError(f"{self!r} is already running at {self.base_url}; call stop() first.")
            started_at = time.monotonic()
            run = self._spawn()
            try:
                self._wait_child_ready(run, started_at)
            except BaseException:
                with contextlib.suppress(ServerShutdownError):  # the start's own error says more
                    self._stop_child(run)
                raise
            self._prun = run
            _running.add(self)
        return self

    def _spawn(self) -> _ProcessRun:
        self._errors.clear()
        self._output.clear()
        self._returncode = None
        cleanup = ExitStack()
        try:
            options = dict(self.uvicorn_options)
            if self._tls is not None:
                cleanup.callback(self._tls.remove_files)
                options.update(self._tls.write_files())
            listener = self._bind()
            parent_end, child_end = socket.socketpair()
            cleanup.callback(parent_end.close)
            with listener, child_end:
                process = self._popen(listener, child_end)
            run = _ProcessRun(process, parent_end, cleanup)
            self._pid = process.pid
            config = {
                "app": self.app,
                "options": options,
                "shutdown_timeout": self.shutdown_timeout,
                "log_level": self.log_level,
                "sys_path": [os.path.abspath(entry) for entry in sys.path],
            }
            with contextlib.suppress(OSError):  # a child that already died is reported by the reader
                parent_end.sendall(json.dumps(config).encode() + b"\n")
            name = f"uvicorn-testserver child {self._host}:{self._port}"
            assert process.stdout is not None
            run.threads = [
                threading.Thread(target=self._read_events, args=(run,), name=f"{name} events", daemon=True),
                threading.Thread(
                    target=self._drain_output, args=(run, process.stdout), name=f"{name} output", daemon=True
                ),
            ]
            for thread in run.threads:
                thread.start()
        except BaseException:
            cleanup.close()
            raise
        return run

    def _popen(self, listener: socket.socket, child_end: socket.socket) -> subprocess.Popen[bytes]:
        env = None if self.env is None else {**os.environ, **self.env}
        command = [
            sys.executable,
            "-m",
            "uvicorn_testserver._child",
            "--listen-fd",
            str(listener.fileno()),
            "--control-fd",
            str(child_end.fileno()),
        ]
        try:
            return subprocess.Popen(
                command,
                pass_fds=(listener.fileno(), child_end.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
            )
        except OSError as exc:
            raise ServerStartupError(
                f"cannot start the child process for {self._app_name()} on {self._host}:{self._port}: {exc}. "
                f"Check cwd={self.cwd!r} and that {sys.executable} runs.",
                host=self._host,
                port=self._port,
                app=self._app_name(),
                elapsed=0.0,
            ) from exc

    def _read_events(self, run: _ProcessRun) -> None:
        """Handle the child's JSON lines until its end of the channel closes."""
        try:
            with run.control.makefile("rb") as lines:
                for line in lines:
                    try:
                        event = json.loads(line)
                        self._handle_event(run, event)
                    except (ValueError, KeyError, TypeError):
                        continue  # not from the harness; keep reading so the child never blocks on a full pipe
        except OSError:
            pass  # the channel broke: the child is treated as gone
        finally:
            if not run.ready.done():
                run.ready.set_exception(_ChildFailed("", None))

    def _handle_event(self, run: _ProcessRun, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "log":
            self._emit_log(event)
        elif kind == "app_error":
            self._errors.append(ChildAppError.from_event(event))
        elif kind == "ready" and not run.ready.done():
            run.ready.set_result(None)
        elif kind == "failed" and not run.ready.done():
            cause = ChildAppError.from_event(event["cause"]) if event.get("cause") else None
            run.ready.set_exception(_ChildFailed(str(event["reason"]), cause))
        elif kind == "stopped":
            run.stopped.set()
        elif kind == "forced":
            run.forced.set()

    def _emit_log(self, event: dict[str, Any]) -> None:
        message = str(event["msg"])
        if event.get("exc_text"):
            message = f"{message}\n{event['exc_text']}"
        record = logging.makeLogRecord(
            {
                "name": event["name"],
                "levelno": event["levelno"],
                "levelname": event["levelname"],
                "msg": message,
                "created": event["created"],
                "msecs": (event["created"] % 1) * 1000,
                "pathname": event.get("pathname", ""),
                "lineno": event.get("lineno", 0),
                "funcName": event.get("funcName", ""),
                "processName": f"uvicorn-testserver child {self._pid}",
            }
        )
        name = str(event["name"])
        if name in LOGGER_NAMES:
            self._log.append(record)
        logger = logging.getLogger(name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)

    def _drain_output(self, run: _ProcessRun, stream: IO[bytes]) -> None:
        """Copy the child's output into `output` until end-of-file, or until stop() gives up on it."""
        fd = stream.fileno()
        while True:
            readable, _, _ = select.select([fd], [], [], 0.1)
            if not readable:
                if run.closing.is_set():
                    return  # a process the app started still holds the pipe open
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._output.feed(chunk.decode(errors="replace"))

    def _wait_child_ready(self, run: _ProcessRun, started_at: float) -> None:
        deadline = started_at + self.startup_timeout
        try:
            run.ready.result(timeout=max(0.0, deadline - time.monotonic()))
        except _ChildFailed as failure:
            code = self._reap(run, timeout=_EXIT_WAIT)
            what = f"failed to start: {failure.reason} (exit code {code})" if failure.reason else None
            raise self._child_startup_error(
                what or f"exited with code {code} before it was ready", run, started_at
            ) from failure.cause
        except concurrent.futures.TimeoutError:
            raise self._child_startup_error(
                f"was not ready within startup_timeout={self.startup_timeout}s: importing the app or lifespan "
                "startup did not finish. Look for a blocking call or an await that never returns in the app's "
                "startup, or raise startup_timeout",
                run,
                started_at,
            ) from None
        if self.health_path is not None:

            def ended() -> ServerStartupError | None:
                if run.process.poll() is None:
                    return None
                return self._child_startup_error(
                    f"exited with code {run.process.returncode} while waiting for {self.health_path} to answer 2xx",
                    run,
                    started_at,
                )

            self._wait_healthy(deadline, ended, lambda what: self._child_startup_error(what, run, started_at))

    def _child_startup_error(self, what: str, run: _ProcessRun, started_at: float) -> ServerStartupError:
        elapsed = time.monotonic() - started_at
        self._finish_output(run)
        output = self._output.tail()
        return ServerStartupError(
            f"the child process (pid {run.process.pid}) serving {self._app_name()} on {self._host}:{self._port} "
            f"{what} (after {elapsed:.3f}s)."
            + (f"\n--- child process output (last lines) ---\n{output}" if output else ""),
            host=self._host,
            port=self._port,
            app=self._app_name(),
            elapsed=elapsed,
            log_tail=self._log.tail(),
        )

    # -- stop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the child and block until it has exited and been reaped. Idempotent; safe before `start()`.

        Closes the control channel: the child finishes in-flight requests for up to
        `shutdown_timeout` s, runs lifespan shutdown, and forces its own exit if that
        overruns; a child that still runs gets SIGTERM, then SIGKILL. Raises
        `ServerShutdownError` if the child had to be forced, signalled, or had died while
        serving (it is gone either way), then, with `raise_server_exceptions`,
        `ServerExceptionsError` for the app's exceptions (`ChildAppError`s).
        """
        with self._lock:
            run, self._prun = self._prun, None
            if run is None:
                return
            _running.discard(self)
            self._stop_child(run)
        self._raise_app_errors()

    def _stop_child(self, run: _ProcessRun) -> None:
        started_at = time.monotonic()
        process = run.process
        died_while_serving = run.ready.done() and run.ready.exception() is None and process.poll() is not None
        signalled = ""
        try:
            with contextlib.suppress(OSError):
                run.control.shutdown(socket.SHUT_WR)
            try:
                # The child forces its own exit after shutdown_timeout + margin + grace, counted from
                # when it sees the channel close; on a loaded machine it is scheduled seconds late.
                process.wait(self.shutdown_timeout + _STOP_MARGIN + _FORCE_GRACE + _LATE_CHILD)
            except subprocess.TimeoutExpired:
                signalled = "SIGTERM"
                process.terminate()
                try:
                    process.wait(_FORCE_GRACE)
                except subprocess.TimeoutExpired:
                    signalled = "SIGTERM, then SIGKILL"
                    process.kill()
                    process.wait()
            self._finish_output(run)
        finally:
            run.closing.set()
            for thread in run.threads:
                thread.join(1.0)
            if process.stdout is not None:
                process.stdout.close()
            run.cleanup.close()
        self._returncode = process.returncode
        elapsed = time.monotonic() - started_at
        where = f"the child process (pid {process.pid}) serving {self._app_name()} on {self._host}:{self._port}"
        problem = ""
        if signalled:
            problem = (
                f"{where} did not stop within {elapsed:.1f}s (shutdown_timeout={self.shutdown_timeout}s) and was sent "
                f"{signalled}; it has exited (code {process.returncode}). Something blocks its event loop while "
                "holding the GIL, or it ignores the shutdown."
            )
        elif run.forced.is_set() or process.returncode == _EXIT_FORCED:
            problem = (
                f"{where} did not stop within shutdown_timeout={self.shutdown_timeout}s and forced its exit "
                f"(code {process.returncode}). Something blocks its event loop: a synchronous sleep or blocking "
                "I/O in an async handler or in lifespan shutdown."
            )
        elif died_while_serving and not run.stopped.is_set():
            problem = f"{where} exited with code {process.returncode} while serving, before stop() asked it to."
        if problem:
            output = self._output.tail()
            raise ServerShutdownError(
                problem + (f"\n--- child process output (last lines) ---\n{output}" if output else ""),
                host=self._host,
                port=self._port,
                app=self._app_name(),
                elapsed=elapsed,
                log_tail=self._log.tail(),
            )

    def _reap(self, run: _ProcessRun, timeout: float) -> int | str:
        try:
            code = run.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return "unknown (it closed the control channel but still runs)"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"{code} ({signal.Signals(-code).name})"
        return code

    def _finish_output(self, run: _ProcessRun) -> None:
        """Give the output thread a moment to read what an exited child wrote last."""
        if run.process.poll() is None:
            return
        output_thread = run.threads[1] if len(run.threads) > 1 else None
        if output_thread is not None:
            output_thread.join(1.0)

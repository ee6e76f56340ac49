"""``mode="process"``: the app runs in a child Python process; the parent keeps the lifecycle.

The core binds the listening socket (so the port is race-free, as in every mode), and
`ProcessRun` passes its descriptor to the child with one end of a socket pair, the
control channel (see `uvicorn_testserver._runners.child`). The child is forked from the
warm template process, or spawned as ``python -m uvicorn_testserver._runners.child``
(see `uvicorn_testserver._runners.child_process`); either way it is the same child.
Readiness, startup failures, log records and the app's unhandled exceptions come back
over the channel; a ping over it settles the child's loop so `errors` are complete.
The child's stdout and stderr (merged) are drained by a thread into a bounded buffer,
`output`, whose tail is in every error.

Stopping sends the child the stop signal (SIGTERM, or SIGINT with ``stop_signal``), as a
process manager would: its handler is uvicorn's own ``handle_exit``, and the child then
stops the way thread mode does (and forces its own exit if that overruns). If it still
runs, the core sends SIGTERM and closes the channel, then SIGKILL, each wait bounded. An
abandoned start, or a parent that dies, closes the channel: the child stops on its own,
so no orphan is left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import IO, Any, Literal

from uvicorn_testserver._core.app_errors import InFlight
from uvicorn_testserver._core.logs import (
    LOGGER_NAMES,
    carries_traceback,
    passes_on,
    record_from_fields,
    without_traceback,
)
from uvicorn_testserver._core.run import FORCE_GRACE, Launch, done_within
from uvicorn_testserver._core.sockets import readable
from uvicorn_testserver._core.uvicorn_internals import StartupFailed
from uvicorn_testserver._runners.child_process import EXIT_UNKNOWN, ChildProcess, start_child
from uvicorn_testserver._runners.coverage import ChildCoverage

__all__ = ["EXIT_FORCED", "EXIT_STARTUP_FAILED", "ChildAppError", "ProcessRun"]

#: Exit codes of the child: a failed start (as uvicorn's own), and a stop it had to force.
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 70
_OUTPUT_LINES = 2000
_OUTPUT_TAIL = 20
# How long a child that reported a failed start may take to exit (interpreter teardown on a busy machine).
_EXIT_WAIT = 10.0
# How much later than its own deadline a child may force its exit before it is signalled.
_LATE_CHILD = 5.0
_SETTLE_TIMEOUT = 1.0


class ChildAppError(Exception):
    """An exception the app raised inside the child process, carried back as text.

    ``str()`` is the child's full formatted traceback; `type_name` is the exception's
    class (``"ValueError"``, ``"httpx.ConnectError"``) and `message` its ``str()``.
    The exception object itself cannot cross the process boundary.
    """

    __module__ = "uvicorn_testserver"  # reports name it as users import it, even before that import

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


class ProcessRun:
    """One run in a child process: start it, read its events and output, signal it if it will not stop."""

    # The child forces its own exit at shutdown_timeout + STOP_MARGIN + FORCE_GRACE, counted from when it
    # sees the channel close; on a loaded machine it is scheduled seconds late.
    stop_budget = FORCE_GRACE + _LATE_CHILD
    in_loop: Literal[False] = False

    def __init__(self, launch: Launch) -> None:
        self._launch = launch
        self._control, self._child_end = socket.socketpair()
        self.process: ChildProcess | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped = threading.Event()
        self._closing = threading.Event()
        self._send_lock = threading.Lock()
        self._pong = threading.Condition()
        self._pings = self._pongs = 0
        self._in_flight: list[InFlight] = []
        self._threads: list[threading.Thread] = []
        self._output = _Output()
        self._asked = False
        self._died_while_serving = False
        self._signalled = ""
        self._coverage = ChildCoverage.if_measuring()

    # -- start --

    def launch(self) -> None:
        settings, listener = self._launch.settings, self._launch.sock
        try:
            self.process, start = start_child(self._launch, self._child_end, coverage=self._coverage is not None)
        finally:
            # The child serves the socket now; the parent's copy must not hold clients in its queue after it exits.
            self._child_end.close()
            listener.close()
        options = dict(self._launch.options)
        # A callable can only be ssl=True's own context factory (the settings let only JSON values through).
        factory = options.pop("ssl_context_factory") if callable(options.get("ssl_context_factory")) else None
        config = {
            "app": settings.app,
            "host": settings.host,
            "options": options,
            "ssl_context_factory": _import_string(factory) if factory is not None else None,
            "startup_timeout": settings.startup_timeout,
            "shutdown_timeout": settings.shutdown_timeout,
            "log_level": settings.log_level,
            "stop_signal": settings.stop_signal,
            "sys_path": [os.path.abspath(entry) for entry in sys.path],
            "coverage": self._coverage.request() if self._coverage is not None else None,
            "start": start,  # a forked child's environment and working directory
        }
        self._send(json.dumps(config))
        name = f"uvicorn-testserver child {self.process.pid}"
        assert self.process.stdout is not None
        self._threads = [
            threading.Thread(target=self._read_events, name=f"{name} events", daemon=True),
            threading.Thread(
                target=self._drain_output, args=(self.process.stdout,), name=f"{name} output", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self, line: str) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # a child that died is reported by the reader
            self._control.sendall(line.encode() + b"\n")

    def wait_ready(self, timeout: float) -> bool:
        try:
            return done_within(self._ready, timeout)
        except _ChildFailed as failure:
            code = self._reap(_EXIT_WAIT)
            reason = (
                f"{failure.reason} (exit code {code})"
                if failure.reason
                else f"exited with code {code} before it was ready"
            )
            raise StartupFailed(reason) from failure.cause

    def _reap(self, timeout: float) -> int | str:
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return "unknown (it closed the control channel but still runs)"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"{code} ({signal.Signals(-code).name})"
        return code

    # -- what the child says --

    def _read_events(self) -> None:
        """Handle the child's JSON lines until its end of the channel closes."""
        try:
            with self._control.makefile("rb") as lines:
                for line in lines:
                    try:
                        self._handle_event(json.loads(line))
                    except (ValueError, KeyError, TypeError):
                        continue  # not from the harness; keep reading so the child never blocks on a full pipe
        except OSError:
            pass  # the channel broke: the child is treated as gone
        finally:
            if not self._ready.done():
                self._ready.set_exception(_ChildFailed("", None))
            with self._pong:
                self._pongs = self._pings  # nobody is left to answer
                self._pong.notify_all()

    def _handle_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "log":
            self._emit_log(event)
        elif kind == "app_error":
            self._launch.on_app_error(ChildAppError.from_event(event), str(event.get("serving", "")))
        elif kind == "pong":
            now = time.monotonic()
            in_flight = [InFlight(method, path, now - seconds) for method, path, seconds in event.get("in_flight", [])]
            with self._pong:
                self._pongs = max(self._pongs, int(event["n"]))
                self._in_flight = in_flight
                self._pong.notify_all()
        elif kind == "ready" and not self._ready.done():
            self._ready.set_result(None)
        elif kind == "failed" and not self._ready.done():
            cause = ChildAppError.from_event(event["cause"]) if event.get("cause") else None
            self._ready.set_exception(_ChildFailed(str(event["reason"]), cause))
        elif kind == "stopped":
            self._stopped.set()

    def _emit_log(self, event: dict[str, Any]) -> None:
        record = record_from_fields(event, processName=f"uvicorn-testserver child {self.pid}")
        name = str(event["name"])
        if name in LOGGER_NAMES:
            self._launch.log.append(record)
        log = self._launch.log
        if passes_on(log, name) and logging.getLogger(name).isEnabledFor(record.levelno):
            if log.traceback_elsewhere is not None and carries_traceback(record):
                record = copy.copy(record)
                without_traceback(record, log)
            logging.getLogger(name).handle(record)

    def _drain_output(self, stream: IO[bytes]) -> None:
        """Copy the child's output into `output` until end-of-file, or until the run is released."""
        fd = stream.fileno()
        while True:
            if not readable(fd, 0.1):
                if self._closing.is_set():
                    return  # a process the app started still holds the pipe open
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            self._output.feed(chunk.decode(errors="replace"))

    # -- the core's questions --

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ask_stop(self, grace: float) -> None:
        """A serving child gets the real stop signal, as from a process manager; a start is abandoned by closing
        the channel (the child has no signal handler before it serves)."""
        if self._asked:
            return
        self._asked = True
        self._died_while_serving = self._started() and not self.is_alive()
        if self._started() and self.process is not None and not self._died_while_serving:
            if grace != self._launch.settings.shutdown_timeout:
                self._send(json.dumps({"stop": grace}))
                self.settle()  # the child has read the grace before the signal starts the shutdown
            with contextlib.suppress(OSError):  # it has just exited
                self.process.send_signal(self._launch.settings.signal_number)
            return
        self._close_channel()

    def _close_channel(self) -> None:
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_WR)  # end-of-file on the channel: the child stops

    def _started(self) -> bool:
        return self._ready.done() and self._ready.exception() is None

    def wait_ended(self, timeout: float) -> bool:
        if self.process is None:
            return True
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def force(self) -> None:
        """The process manager's escalation: SIGTERM, and end-of-file on the channel, which makes a child whose
        app replaced the stop signal's handler stop (and force its own exit) all the same."""
        self._close_channel()
        if self.process is not None:
            self._signalled = "SIGTERM"
            self.process.terminate()

    def kill(self) -> bool:
        if self.process is None:
            return False
        self._signalled = "SIGTERM, then SIGKILL"
        self.process.kill()
        return True

    def settle(self) -> None:
        """Ping the child and wait for its answer: it comes after every event of the step its loop was in."""
        if not (self._started() and self.is_alive()):
            return
        with self._pong:
            self._pings += 1
            ping = self._pings
        self._send(json.dumps({"ping": ping}))
        with self._pong:
            self._pong.wait_for(lambda: self._pongs >= ping, _SETTLE_TIMEOUT)

    def in_flight(self) -> list[InFlight]:
        """What the child answers to a ping: it answers once its loop finished the step it was in."""
        self.settle()
        with self._pong:
            return list(self._in_flight) if self.is_alive() else []

    def problem(self) -> tuple[str, BaseException | None] | None:
        assert self.process is not None or not self._started()
        code = self.process.returncode if self.process is not None else None
        timeout = self._launch.settings.shutdown_timeout
        if self._signalled:
            return (
                f"did not stop within shutdown_timeout={timeout}s and was sent {self._signalled}; it has exited "
                f"(code {code}). Something blocks its event loop while holding the GIL, or it ignores the shutdown.",
                None,
            )
        if code == EXIT_FORCED:
            return (
                f"did not stop within shutdown_timeout={timeout}s and forced its exit (code {code}). Something "
                "blocks its event loop: a synchronous sleep or blocking I/O in an async handler or in lifespan "
                "shutdown.",
                None,
            )
        if self._died_while_serving:
            return f"exited with code {code} while serving, before stop() asked it to.", None
        if code not in (None, 0, EXIT_STARTUP_FAILED) and self._started():
            if code == EXIT_UNKNOWN and self._stopped.is_set():
                return None  # it said it stopped; its exit code went with the template process that forked it
            return f"exited with code {code} while stopping.", None
        return None

    def left_behind(self) -> str:
        return "The child process could not be reaped even after SIGKILL."

    def release(self) -> None:
        self._closing.set()
        with contextlib.suppress(OSError):
            self._control.shutdown(socket.SHUT_RDWR)  # ends the reader, whose file object holds the socket open
        self._control.close()
        self._child_end.close()
        for thread in self._threads:
            thread.join(1.0)
        if self.process is not None:
            self.process.release()
        if self._coverage is not None:
            self._coverage.finish(merge=self.process is not None and self.process.poll() is not None)

    def diagnostics(self) -> str:
        if self.process is None:
            return ""
        if self.process.poll() is not None and len(self._threads) > 1:
            self._threads[1].join(1.0)  # let the output thread read what an exited child wrote last
        output = self._output.tail()
        return f"\n--- child process output (last lines) ---\n{output}" if output else ""

    def describe(self) -> str:
        return f"pid {self.pid}" if self.pid is not None else ""

    @property
    def pid(self) -> int | None:
        """The child's process id, once spawned."""
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it ended (negative: killed by that signal), else None."""
        return self.process.returncode if self.process is not None else None

    @property
    def output(self) -> str:
        """The child's merged stdout and stderr (the last lines)."""
        return self._output.text()


def _import_string(function: object) -> str:
    """A module-level function as ``"module:name"``, for the child's JSON."""
    module, name = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if module is None or not name.isidentifier():
        raise TypeError(f"{function!r} cannot be sent to the child process")
    return f"{module}:{name}"

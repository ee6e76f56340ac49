"""The child process of ``mode="process"``: ``python -m uvicorn_testserver._child``.

The parent passes two inherited file descriptors: the listening socket it bound, and
one end of a socket pair, the *control channel*. Over the channel the parent sends one
JSON line (the app, uvicorn options, log level, its ``sys.path``) and then nothing;
closing its end means "stop". The child answers with JSON lines: ``log`` records,
``ready`` once lifespan startup completed and the socket is served, ``failed`` with
the reason and the app's traceback, ``app_error`` for every unhandled exception, and
``stopped`` after a graceful shutdown.

The channel reaching end-of-file is also how the child notices that its parent died
(the kernel closes a dead process's descriptors), so it never outlives the test run. A
watchdog thread, which runs even while the event loop is blocked, forces the exit
if the graceful shutdown does not finish in time. SIGINT is ignored: on Ctrl-C the
parent stops its children itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, BinaryIO

from uvicorn_testserver._errors import format_exception
from uvicorn_testserver._logs import ServerLog, capture_into, install_capture, log_level_lease
from uvicorn_testserver._server import _FORCE_GRACE, _LEVELS, _STOP_MARGIN, LoopTask
from uvicorn_testserver._uvicorn import HarnessServer, StartupFailed, loop_factory, make_config
from uvicorn_testserver._wsgi import serve_app

#: Exit codes: startup failed (as uvicorn's own), and the watchdog forced the exit.
EXIT_STARTUP_FAILED = 3
EXIT_FORCED = 70


class Channel:
    """The child's end of the control channel: JSON lines out, thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader: BinaryIO = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields}).encode() + b"\n"
        with self._lock, contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            self.sock.sendall(line)


def describe_exception(exc: BaseException) -> dict[str, str]:
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return {"type": name, "message": str(exc), "traceback": format_exception(exc)}


class ForwardHandler(logging.Handler):
    """Sends every log record to the parent, which re-emits it and keeps it in `server.log`."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        exc_text = None
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = format_exception(record.exc_info[1])
        self.channel.send(
            "log",
            name=record.name,
            levelno=record.levelno,
            levelname=record.levelname,
            msg=record.getMessage(),
            created=record.created,
            exc_text=exc_text,
            pathname=record.pathname,
            lineno=record.lineno,
            funcName=record.funcName,
        )


class Child:
    def __init__(self, channel: Channel, listener: socket.socket, config: dict[str, Any]) -> None:
        self.channel = channel
        self.listener = listener
        self.config = config
        self.shutdown_timeout = float(config["shutdown_timeout"])
        self.server: HarnessServer | None = None
        self.main = LoopTask()
        self.started = False
        self.finished = threading.Event()

    def run(self) -> int:
        for entry in reversed(self.config["sys_path"]):
            if entry not in sys.path:
                sys.path.insert(1, entry)  # after the child's own first entry, the working directory
        level = _LEVELS[self.config["log_level"]]
        root = logging.getLogger()
        root.addHandler(ForwardHandler(self.channel))
        root.setLevel(level)
        install_capture()
        log = ServerLog(max_records=200)
        log.drop_access_log = self.config["options"].get("access_log") is False
        log.level = level
        with capture_into(log), log_level_lease(level):
            try:
                app, options = serve_app(self.config["app"], self.config["options"])
                uvicorn_config = make_config(app, shutdown_timeout=self.shutdown_timeout, options=options)
                self.server = HarnessServer(uvicorn_config, on_app_error=self._report_app_error)
                factory = loop_factory(uvicorn_config)
            except StartupFailed as exc:
                return self._fail(exc.reason, exc.__cause__)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it as a startup error
                return self._fail(f"cannot configure uvicorn: {exc!r}", exc)
            threading.Thread(target=self._watch_parent, name="uvicorn-testserver watchdog", daemon=True).start()
            try:
                with asyncio.Runner(loop_factory=factory) as runner:
                    return runner.run(self._serve(self.server))
            except asyncio.CancelledError:
                return self._fail("the parent gave up waiting for the start", None)
            finally:
                self.finished.set()

    async def _serve(self, server: HarnessServer) -> int:
        if not self.main.bind():  # the parent stopped before this loop existed
            return self._fail("the parent gave up waiting for the start", None)
        try:
            await server.start(self.listener)
        except StartupFailed as exc:
            return self._fail(exc.reason, exc.__cause__)
        self.started = True
        self.channel.send("ready")
        await server.serve_until_exit(self.listener)
        self.channel.send("stopped")
        return 0

    def _fail(self, reason: str, cause: BaseException | None) -> int:
        self.channel.send("failed", reason=reason, cause=describe_exception(cause) if cause is not None else None)
        return EXIT_STARTUP_FAILED

    def _report_app_error(self, exc: BaseException) -> None:
        self.channel.send("app_error", **describe_exception(exc))

    def _watch_parent(self) -> None:
        """Stop when the control channel closes; force the exit if the graceful stop overruns."""
        with contextlib.suppress(OSError):
            while self.channel.reader.read(65536):
                pass  # the parent sends nothing after the configuration: end-of-file means stop
        server = self.server
        assert server is not None
        server.should_exit = True
        if not self.started:
            self.main.cancel()  # still starting (a startup that hangs): abort it
        if self.finished.wait(self.shutdown_timeout + _STOP_MARGIN):
            return
        server.force_exit = True
        self.main.cancel()
        if self.finished.wait(_FORCE_GRACE):
            return
        sys.stderr.write(
            f"uvicorn-testserver child {os.getpid()}: the event loop did not stop within "
            f"{self.shutdown_timeout + _STOP_MARGIN + _FORCE_GRACE:.1f}s; forcing the exit.\n"
        )
        sys.stderr.flush()
        self.channel.send("forced")
        os._exit(EXIT_FORCED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uvicorn_testserver._child", description=__doc__)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=args.control_fd)
    listener = socket.socket(fileno=args.listen_fd)
    # Processes the app starts must not hold these open: the parent waits for end-of-file on them.
    control.set_inheritable(False)
    listener.set_inheritable(False)
    channel = Channel(control)
    line = channel.reader.readline()
    if not line:
        return 0  # the parent went away before sending the configuration
    try:
        config = json.loads(line)
    except ValueError as exc:
        channel.send("failed", reason=f"the configuration from the parent is not JSON: {exc}", cause=None)
        return EXIT_STARTUP_FAILED
    return Child(channel, listener, config).run()


if __name__ == "__main__":
    sys.exit(main())

"""The child process of ``mode="process"``: ``python -m uvicorn_testserver._runners.child``, or `run`
in a child forked from the template process (`uvicorn_testserver._runners.template`).

The parent passes two inherited file descriptors: the listening socket it bound, and
one end of a socket pair, the *control channel*. Over the channel the parent sends one
JSON line (the app, uvicorn options, timeouts, log level, stop signal, its ``sys.path``),
then ``{"ping": n}`` lines and, before a stop with another grace, ``{"stop": seconds}``.
A serving child is stopped by the real signal (SIGTERM or SIGINT), which uvicorn's own
``handle_exit`` handles; closing the parent's end means "abandon the start" or, later,
"stop now" (the parent is gone, or escalates). The child answers with JSON lines:
``log`` records, ``ready`` once lifespan startup completed and the socket is served,
``failed`` with the reason and the app's traceback, ``app_error`` for every unhandled
exception, ``pong`` for each ping once its loop finished the step it was in, and
``stopped`` after a graceful shutdown.

Inside, the child is a thread-mode server (the same `ServerCore` and `ThreadRun`), so
its start, stop and forced exit are the ones every mode has, except that the event loop
runs on the main thread, as it would in production, with uvicorn's signal handling, and
the lifecycle on another. If that stop still cannot end the loop, the child exits with
`EXIT_FORCED`. The channel reaching end-of-file is also how it notices that its parent
died, so it never outlives the test run. It runs in a session of its own: Ctrl-C in a
terminal reaches the test process, which stops its children itself.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from uvicorn_testserver._core.engine import ServerCore
from uvicorn_testserver._core.errors import ServerShutdownError, ServerStartupError, exception_fields
from uvicorn_testserver._core.logs import record_fields
from uvicorn_testserver._core.run import FORCE_GRACE, Launch
from uvicorn_testserver._core.settings import LEVELS, ServerSettings
from uvicorn_testserver._runners.coverage import start_in_child
from uvicorn_testserver._runners.process import EXIT_FORCED, EXIT_STARTUP_FAILED
from uvicorn_testserver._runners.thread import ThreadRun


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


class ForwardHandler(logging.Handler):
    """Sends every log record to the parent, which re-emits it and keeps it in `server.log`."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        self.channel.send("log", **record_fields(record))


class MainThreadRun(ThreadRun):
    """A thread-mode run whose event loop runs on the child's main thread, as the app would in production;
    the lifecycle drives it from another thread.

    While it serves, SIGTERM and SIGINT are handled by uvicorn's own ``handle_exit``, as
    uvicorn installs it (the captured signal is not raised again at the end, so the exit
    code tells a clean stop from a kill); `stop_wanted` is set once the server is to exit.
    """

    def __init__(
        self,
        launch: Launch,
        main_thread: queue.SimpleQueue[Callable[[], None] | None],
        stop_wanted: threading.Event,
    ) -> None:
        super().__init__(launch)
        self._main_thread = main_thread
        self._done = threading.Event()
        self._serving.server.on_exit = stop_wanted.set

    def launch(self) -> None:
        self._main_thread.put(self._serve_then_signal)

    def _serve_then_signal(self) -> None:
        handle_exit = self._serving.server.handle_exit
        previous = {sig: signal.signal(sig, handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._done.set()

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def wait_ended(self, timeout: float) -> bool:
        return self._done.wait(timeout)


def serve(channel: Channel, listener: socket.socket, config: dict[str, Any]) -> int:
    """Serve until the channel closes; return the exit code. The event loop runs on this, the main, thread."""
    for entry in reversed(config["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(1, entry)  # after the child's own first entry, the working directory
    root = logging.getLogger()
    root.addHandler(ForwardHandler(channel))
    root.setLevel(LEVELS[config["log_level"]])
    options = dict(config["options"])
    try:
        if config.get("ssl_context_factory"):  # ssl=True's own, by its import string
            module, _, name = config["ssl_context_factory"].partition(":")
            options["ssl_context_factory"] = getattr(importlib.import_module(module), name)
        settings = ServerSettings.build(
            config["app"],
            options={
                **options,
                "host": config["host"],
                "ssl": False,  # the parent wrote the certificate files; they are in the options
                "startup_timeout": float(config["startup_timeout"]) + FORCE_GRACE,  # the parent's deadline first
                "shutdown_timeout": float(config["shutdown_timeout"]),
                "raise_server_exceptions": False,  # each error goes to the parent as it happens
                "log_level": config["log_level"],
                "stop_signal": config["stop_signal"],
            },
        )
    except (TypeError, ValueError, ImportError, AttributeError) as exc:
        return fail(channel, f"cannot configure uvicorn: {exc!r}", exc)
    main_thread: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
    stop_wanted = threading.Event()
    core = ServerCore(settings, lambda launch: MainThreadRun(launch, main_thread, stop_wanted))
    core.on_app_error = lambda exc, serving: channel.send("app_error", serving=serving, **exception_fields(exc))
    core.use_socket(listener)
    exit_code: list[int] = []
    control = threading.Thread(
        target=lambda: exit_code.append(control_lifecycle(channel, core, main_thread, stop_wanted)),
        name="uvicorn-testserver lifecycle",
        daemon=True,
    )
    control.start()
    while (work := main_thread.get()) is not None:
        work()
    control.join()
    return exit_code[0] if exit_code else 1


def control_lifecycle(
    channel: Channel,
    core: ServerCore,
    main_thread: queue.SimpleQueue[Callable[[], None] | None],
    stop_wanted: threading.Event,
) -> int:
    """Start, serve until a signal or the channel's end asks for the exit, stop; then release the main thread.
    Returns the exit code."""
    cancelled, grace = threading.Event(), list[float]()
    threading.Thread(
        target=watch_channel,
        args=(channel, core, stop_wanted, cancelled, grace),
        name="uvicorn-testserver channel",
        daemon=True,
    ).start()
    try:
        try:
            core.start(cancelled)
        except ServerStartupError as exc:
            return fail(channel, exc.reason, exc.__cause__)
        channel.send("ready")
        stop_wanted.wait()
        try:
            core.stop(grace[-1] if grace else None)
        except ServerShutdownError as exc:
            sys.stderr.write(f"uvicorn-testserver child {os.getpid()}: {exc}\n")
            sys.stderr.flush()
            run = core.last_run
            if run is not None and run.is_alive():
                os._exit(EXIT_FORCED)  # the loop is still stuck on the main thread: end the process under it
            return 1
        channel.send("stopped")
        return 0
    finally:
        main_thread.put(None)


def watch_channel(
    channel: Channel, core: ServerCore, closed: threading.Event, cancelled: threading.Event, grace: list[float]
) -> None:
    """Answer pings (with what is in flight) until the channel closes, then say so (and abandon a start
    still in progress). A ``{"stop": seconds}`` line before the close sets the stop's shutdown_timeout."""
    with contextlib.suppress(OSError, ValueError):
        for line in channel.reader:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                message = json.loads(line)
                if "stop" in message:
                    grace.append(float(message["stop"]))
                    continue
                ping = int(message["ping"])
                now = time.monotonic()
                in_flight = [(r.method, r.path, now - r.started) for r in core.in_flight()]  # settles first
                channel.send("pong", n=ping, in_flight=in_flight)
    cancelled.set()
    core.abandon()
    closed.set()


def fail(channel: Channel, reason: str, cause: BaseException | None) -> int:
    channel.send("failed", reason=reason, cause=exception_fields(cause) if cause is not None else None)
    return EXIT_STARTUP_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uvicorn_testserver._runners.child", description=__doc__)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    args = parser.parse_args(argv)
    return run(args.listen_fd, args.control_fd)


def run(listen_fd: int, control_fd: int, prepare: Callable[[dict[str, Any]], str | None] | None = None) -> int:
    """Read the configuration from the parent, then serve; return the exit code.

    A child forked from the template passes `prepare`, which gives it the parent's environment, working
    directory and ``sys.path`` of this start before anything is imported for the app (or returns why not).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    listener = socket.socket(fileno=listen_fd)
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
        return fail(channel, f"the configuration from the parent is not JSON: {exc}", None)
    if prepare is not None and (problem := prepare(config)) is not None:
        return fail(channel, problem, None)
    # Measured from before the app is imported until the server has stopped, as the parent's own coverage.
    save_coverage = start_in_child(config["coverage"]) if config.get("coverage") else None
    try:
        return serve(channel, listener, config)
    finally:
        if save_coverage is not None:
            save_coverage()


if __name__ == "__main__":
    sys.exit(main())

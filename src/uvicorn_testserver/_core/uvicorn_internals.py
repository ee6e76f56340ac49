"""Everything that depends on uvicorn's internals lives here, and only here.

The harness relies on these members, which are not public API. Each one named in
double backquotes below is checked against the installed release by
`integration_tests/test_uvicorn_contract.py`, which also checks that this list and
its checks agree:

* ``Server.startup(sockets=)``, ``Server.main_loop()``, ``Server.on_tick(counter)``,
  ``Server.shutdown(sockets=)``, ``Server.capture_signals()``, and
  ``Server.handle_exit(sig, frame)``, the signal handler, which asks for the exit (a
  second SIGINT forces it)
* ``Server.started``, ``Server.should_exit``, ``Server.force_exit``, ``Server.servers``,
  ``Server.server_state.connections``, ``Server.server_state.tasks``
* ``Server.lifespan``, with ``lifespan.should_exit``, ``lifespan.shutdown()``,
  ``lifespan.startup_event`` and ``lifespan.main()`` (the task `startup` creates and
  keeps no reference to); a failed lifespan startup ends `Server.startup` in ``SystemExit``
* ``Config.load()``, ``Config.loaded``, ``Config.loaded_app``, ``Config.lifespan_class``,
  ``Config.get_loop_factory()``, ``uvicorn.config.LOOP_FACTORIES``, and the order in
  which `Config.load` sets ``Config.http_protocol_class``, ``Config.ssl`` and
  ``Config.ws_protocol_class`` (it names the step that failed)
* ``Config(log_config=, log_level=, timeout_graceful_shutdown=)``
* ``uvicorn.importer.import_from_string``, ``uvicorn.importer.ImportFromStringError``
* ``connection.shutdown()``, ``connection.transport`` on every protocol in
  ``Server.server_state.connections``, and ``connection.access_log`` on the HTTP ones
* with `http2=True`: ``AutoZttpProtocol._switch(http2, initial_data)``,
  which hands a new connection to the HTTP/1.1 or the HTTP/2 protocol

What it changes, and why:

* `capture_signals` does nothing: a test harness must never take over Ctrl-C. `stop()`
  calls ``handle_exit`` on the server's loop instead, as a signal would (in process mode
  the child installs it for SIGTERM and SIGINT and gets the real signal).
* a start abandoned while lifespan startup runs cancels the lifespan task, or runs
  lifespan shutdown if startup had completed, so no task is left pending.
* an error the app raises after its response went out in full is logged as uvicorn logs
  it, without closing the keep-alive connection under the client.
* the HTTP protocol always writes access lines (the capture filters them per server),
  not only when the process has logging handlers; with HTTP/2, so do the HTTP/1.1 and
  HTTP/2 protocols the dispatcher hands each connection to.
* `main_loop` wakes the moment `should_exit` is set instead of on uvicorn's 0.1 s tick.
* `shutdown` polls connections with a millisecond back-off instead of uvicorn's fixed
  0.1 s sleep plus 0.1 s polling, and says in the log when it cuts open streams.
* uvicorn calls ``sys.exit(3)`` on a failed load or lifespan startup after only
  logging the reason; `HarnessServer.start` turns that into `StartupFailed` with the
  app's exception or the logged reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from uvicorn_testserver._core.versions import unsupported_uvicorn

try:
    import uvicorn
    from uvicorn.config import LOOP_FACTORIES
    from uvicorn.importer import ImportFromStringError, import_from_string
except ImportError as exc:  # a release outside the supported range: say which, not a bare missing name
    raise ImportError(unsupported_uvicorn(exc)) from exc

from uvicorn_testserver._core.app_errors import AppErrorRecorder, AppErrorSink, InFlight
from uvicorn_testserver._core.logs import current_log, harness_logger
from uvicorn_testserver._core.protocols import closed_tls, with_access_log
from uvicorn_testserver._core.run import on_loop

__all__ = ["HarnessServer", "StartupFailed", "import_serving_modules", "loop_factory", "make_config"]


def make_config(app: Any, *, shutdown_timeout: float, options: dict[str, Any]) -> uvicorn.Config:
    """A `uvicorn.Config` that leaves the process's logging alone."""
    options = dict(options)
    options.pop("access_log", None)  # honoured per server by the log capture, not by uvicorn
    return uvicorn.Config(
        app,
        log_config=None,
        log_level=None,
        timeout_graceful_shutdown=shutdown_timeout,  # type: ignore[arg-type]  # uvicorn annotates int, uses it as float
        **options,
    )


# Loop iterations after accepting stops until every socket accepted before is attached to a transport: one,
# and one more for an accept callback already queued behind the stop in the same iteration. (A connection
# whose protocol is not told yet is then aborted with the rest when the loop ends.)
_ACCEPT_ITERATIONS = 2


class _Ready(Protocol):
    """Where `HarnessServer.serve_on` reports readiness: a concurrent or an asyncio future."""

    def done(self) -> bool: ...
    def set_result(self, result: None, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class StartupFailed(Exception):
    """Internal: startup failed; `reason` says why, `__cause__` is the app's exception if any."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HarnessServer(uvicorn.Server):
    """A `uvicorn.Server` that starts on a given socket, stops at once and never touches signals."""

    def __init__(self, config: uvicorn.Config, *, on_app_error: AppErrorSink) -> None:
        self._exit_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_app_error = on_app_error
        self._recorder: AppErrorRecorder | None = None
        self._lifespan_task: asyncio.Task[None] | None = None
        self._listening_stopped = False
        self._exit_asked = False
        #: Called (from any thread) once `should_exit` is set, however: a signal, uvicorn itself, `ask_stop`.
        self.on_exit: Callable[[], None] | None = None
        super().__init__(config)

    # `should_exit` is set from the test's thread; wake the loop instead of waiting for a tick.
    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if not value:
            return
        if self._loop is not None and self._exit_event is not None:
            if on_loop(self._loop):
                self._exit_event.set()
            else:
                with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing to wake
                    self._loop.call_soon_threadsafe(self._exit_event.set)
        if self.on_exit is not None:
            self.on_exit()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def ask_stop(self, grace: float, sig: int = signal.SIGTERM) -> None:
        """Stop serving (from any thread) the way `sig` would under a process manager: through uvicorn's own
        ``handle_exit`` on the server's loop, so what an app hooks there runs. Requests in flight get `grace`
        seconds before they are cut. Once only: a second SIGINT would force the exit."""
        self.config.timeout_graceful_shutdown = grace  # type: ignore[assignment]  # an int to uvicorn's types
        if self._exit_asked or self.should_exit:
            return
        self._exit_asked = True
        loop = self._loop
        if loop is None or loop.is_closed():
            self.handle_exit(sig, None)  # not serving yet (or any more): nothing runs on a loop
            return
        if on_loop(loop):  # loop mode: already where handle_exit runs
            self._exit_once(sig)
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(self._exit_once, sig)

    def _exit_once(self, sig: int) -> None:
        if not self.should_exit:  # a real signal may have come first
            self.handle_exit(sig, None)

    def force(self) -> None:
        """Skip what is left of the graceful shutdown (from any thread)."""
        self.force_exit = True

    @property
    def has_started(self) -> bool:
        """True once startup completed and the socket is served."""
        return bool(self.started)

    def load(self) -> None:
        """Load the app and protocol classes; raise `StartupFailed` where uvicorn would exit."""
        config = self.config
        if isinstance(config.app, str):
            try:
                target = import_from_string(config.app)
            except ImportFromStringError as exc:
                raise StartupFailed(f"cannot import the app {config.app!r}: {exc}") from exc
            except Exception as exc:
                raise StartupFailed(f"importing the app {config.app!r} raised {exc!r}") from exc
            if not callable(target):
                what = "an app factory" if config.factory else "an ASGI or WSGI application"
                raise StartupFailed(
                    f"the app {config.app!r} names {type(target).__name__} {target!r}, not {what}. Name the "
                    "application object (or its factory, with factory=True)"
                )
        try:
            config.load()
        except SystemExit as exc:
            # uvicorn logged why, then exited; the exception it was handling, if any, is the cause.
            reason = _last_error_logged() or "uvicorn could not load the app"
            raise StartupFailed(reason) from exc.__context__
        except Exception as exc:
            raise StartupFailed(_describe_load_failure(config, exc)) from exc
        self._recorder = AppErrorRecorder(config.loaded_app, self._on_app_error)
        config.loaded_app = self._recorder
        config.http_protocol_class = with_access_log(config.http_protocol_class)

    async def start(self, sock: socket.socket) -> None:
        """Load, run lifespan startup and listen on `sock`; raise `StartupFailed` on failure."""
        self._loop = asyncio.get_running_loop()
        self._exit_event = asyncio.Event()
        if not self.config.loaded:
            self.load()
        self.lifespan = self._tracked(self.config.lifespan_class(self.config))
        try:
            await self.startup(sockets=[sock])
        except asyncio.CancelledError:
            await self._end_cancelled_startup(sock)
            raise
        except SystemExit:
            recorder = self._recorder
            app_error = recorder.lifespan_error if recorder is not None else None
            if app_error is not None:
                raise StartupFailed(f"lifespan startup raised {app_error!r}") from app_error
            reported = recorder.startup_failure if recorder is not None else None
            reason = reported or _last_error_logged() or "the app sent lifespan.startup.failed"
            raise StartupFailed(f"lifespan startup failed: {reason}") from None
        if self._recorder is not None:
            # An app without lifespan support raises on the lifespan scope; that is not an error.
            self._recorder.lifespan_error = None

    def _tracked(self, lifespan: Any) -> Any:
        """`lifespan`, its task kept (uvicorn keeps none) so a cancelled startup can end it."""
        main = getattr(lifespan, "main", None)  # LifespanOn has one; LifespanOff runs nothing
        if main is not None:

            async def tracked_main() -> None:
                self._lifespan_task = asyncio.current_task()
                try:
                    await main()
                finally:
                    del lifespan.main  # this closure holds the server: no cycle left once the lifespan ends

            lifespan.main = tracked_main
        return lifespan

    async def _end_cancelled_startup(self, sock: socket.socket) -> None:
        """After a start was abandoned mid-way: close what listens, and end the app's lifespan cleanly. A
        startup that completed gets its shutdown; one still running is cancelled, so no task is left pending."""
        self._close_listeners()
        self.servers = []  # as at the end of a run: uvicorn's protocol factory in each holds this server
        # Cancelled inside `loop.create_server`, the listener already serves but uvicorn never got the server
        # object: the loop would keep watching the socket's descriptor, which a later socket may reuse.
        with contextlib.suppress(ValueError, OSError):  # closed already
            asyncio.get_running_loop().remove_reader(sock.fileno())
        lifespan, task = self.lifespan, self._lifespan_task
        completed = getattr(lifespan, "startup_event", None)
        if completed is not None and completed.is_set() and not lifespan.should_exit:
            await lifespan.shutdown()
        elif task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def serve_on(self, sock: socket.socket, ready: _Ready) -> None:
        """`start` on `sock`, report the outcome through `ready`, then serve until `should_exit`."""
        try:
            await self.start(sock)
        except StartupFailed as exc:
            if not ready.done():  # (an awaited one is cancelled with the start that gave up on it)
                ready.set_exception(exc)
            return
        if not ready.done():
            ready.set_result(None)
        await self.serve_until_exit(sock)

    async def serve_until_exit(self, sock: socket.socket) -> None:
        """Serve until `should_exit`, then shut down gracefully (after a successful `start`)."""
        try:
            await self.main_loop()
            await self.shutdown(sockets=[sock])
        finally:
            if not self._listening_stopped:  # a forced exit cut the shutdown short
                with contextlib.suppress(asyncio.CancelledError):  # then close and abort what is known
                    await self._stop_listening()
            self._close_listeners()
            self._abort_connections()
            self.servers = []  # uvicorn's protocol factory in each holds this server: no cycle outlives the run

    async def _stop_listening(self) -> None:
        """Stop accepting, let the connections accepted just before reach uvicorn, then close the listeners.

        asyncio hands an accepted socket to its protocol a loop iteration or two later.
        Closing the `asyncio.Server` in between makes that hand-over fail (on Python 3.11
        an assertion that asyncio swallows), and the socket is never closed: its client
        waits for an answer that never comes. So accepting stops first, and the server
        closes once nothing is on its way in.
        """
        self._listening_stopped = True
        loop = asyncio.get_running_loop()
        for server in getattr(self, "servers", []):
            for listener in server.sockets:
                if listener.fileno() != -1:
                    loop.remove_reader(listener.fileno())
        for _ in range(_ACCEPT_ITERATIONS):
            await asyncio.sleep(0)
        self._close_listeners()

    def _close_listeners(self) -> None:
        for server in getattr(self, "servers", []):
            # After a stop that gave up on this thread, the harness has closed the socket already.
            with contextlib.suppress(ValueError, OSError):
                server.close()

    def _abort_connections(self) -> None:
        """Drop every connection still open, so no socket outlives the loop.

        A forced exit skips the graceful close, and a client that never answers a
        WebSocket close handshake keeps its connection past the shutdown timeout.
        """
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()

    async def main_loop(self) -> None:
        assert self._exit_event is not None
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            # uvicorn ticks every 0.1 s (date header, max-requests); keep that, but wake on exit.
            try:
                async with asyncio.timeout(0.1):
                    await self._exit_event.wait()
            except TimeoutError:
                pass

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._stop_listening()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and transport.is_closing():
                # Closing it again would make asyncio's TLS transport drop its protocol, and with
                # it the way to abort the socket underneath.
                continue
            try:
                connection.shutdown()
            except Exception as exc:  # noqa: BLE001 - one connection must not stop the shutdown of the others
                # uvicorn's websockets-sansio protocol raises InvalidState for a WebSocket whose
                # closing handshake is under way; that connection is ending anyway.
                harness_logger.debug("Shutting down connection %r raised %r; it is closing already.", connection, exc)
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                await self._wait_until_drained()
        except TimeoutError:
            await self._cut()
        if not self.force_exit:
            await self.lifespan.shutdown()
            if self._recorder is not None and self._recorder.lifespan_error is not None:
                self._on_app_error(self._recorder.lifespan_error, "lifespan shutdown")

    def in_flight(self) -> list[InFlight]:
        """The requests and WebSockets the app is handling now."""
        return list(self._recorder.in_flight.values()) if self._recorder is not None else []

    async def _cut(self) -> None:
        """End what still runs after the graceful timeout: say so once, drop the connections, cancel the handlers.

        The connections go first, so uvicorn sees a client that left: no "Exception in ASGI
        application" traceback and no 500 that nobody receives.
        """
        tasks = list(self.server_state.tasks)
        now = time.monotonic()
        harness_logger.warning(
            "Cut %d request(s) still running after the %.1fs graceful shutdown timeout: %s.",
            len(tasks),
            self.config.timeout_graceful_shutdown,
            "; ".join(request.describe(now) for request in self.in_flight()) or "(not started yet)",
        )
        self._abort_connections()
        if self._recorder is not None:
            self._recorder.cut.update(tasks)
        for task in tasks:
            task.cancel("cut by uvicorn-testserver at shutdown")
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait_until_drained(self) -> None:
        delay = 0.0005
        while (self._undrained_connections() or self.server_state.tasks) and not self.force_exit:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _undrained_connections(self) -> list[Any]:
        # A TLS connection closed while idle waits for the client's close_notify, which an idle
        # keep-alive client never sends (asyncio waits 30 s). Once its buffer is flushed it is done;
        # serve_until_exit aborts it.
        return [c for c in self.server_state.connections if not closed_tls(getattr(c, "transport", None))]


@functools.cache
def _builtin_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    config = uvicorn.Config(_no_app, loop=name, log_config=None)
    return config.get_loop_factory()


def loop_factory(config: uvicorn.Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`config.get_loop_factory()`, resolved once per process for uvicorn's own loop names.

    uvicorn's "auto" tries ``import uvloop`` on every call; a failed import costs a
    search of sys.path, a large part of a start when it happens each time. Raises
    `StartupFailed` where uvicorn would exit or the loop implementation cannot import.
    """
    try:
        if isinstance(config.loop, str) and config.loop in LOOP_FACTORIES:
            return _builtin_loop_factory(config.loop)
        return config.get_loop_factory()
    except SystemExit as exc:
        reason = _last_error_logged() or "uvicorn could not load it"
        raise StartupFailed(f"cannot create the event loop loop={config.loop!r}: {reason}") from exc.__context__
    except Exception as exc:
        raise StartupFailed(
            f"cannot create the event loop loop={config.loop!r}: {exc!r}. Install it, or pass loop='asyncio'"
        ) from exc


def import_serving_modules() -> None:
    """Import what a server with uvicorn's default options loads as it starts, without starting one.

    For a process that forks servers later (process mode's template): uvicorn imports its
    protocol, lifespan and loop modules in ``Config.load`` and when it resolves the loop. No
    event loop is created, no thread started, logging left alone.
    """
    config = make_config(_no_app, shutdown_timeout=1.0, options={})
    config.load()
    loop_factory(config)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("placeholder app, never served: it only resolves what serving imports")


def _describe_load_failure(config: uvicorn.Config, exc: Exception) -> str:
    """Say which step of ``Config.load()`` raised `exc`.

    ``load()`` sets these attributes in this order, so the first one missing names the step.
    """
    version = uvicorn.__version__
    if not hasattr(config, "http_protocol_class"):
        return (
            f"cannot load the HTTP implementation http={config.http!r}: {exc!r}. Pass http='h11' (it ships with "
            f"uvicorn), or install a version of that implementation that matches uvicorn {version}"
        )
    if not hasattr(config, "ssl"):
        return f"cannot set up TLS: {exc!r}. Check ssl_certfile, ssl_keyfile and ssl_context_factory"
    if not hasattr(config, "ws_protocol_class"):
        return (
            f"cannot load the WebSocket implementation ws={config.ws!r}: {exc!r}. Install a websockets or "
            f"wsproto version that matches uvicorn {version}, or pass ws='wsproto' or ws='none'"
        )
    if not hasattr(config, "lifespan_class"):
        return f"cannot load the lifespan implementation lifespan={config.lifespan!r}: {exc!r}"
    if config.factory:
        return f"the app factory raised {exc!r}"
    return f"uvicorn could not load the app: {exc!r}"


def _last_error_logged() -> str | None:
    """The message of the last ERROR record this server logged (uvicorn logs, then exits)."""
    log = current_log()
    if log is None:
        return None
    for record in reversed(log.records):
        if record.levelno >= logging.ERROR:
            return record.getMessage().strip()
    return None

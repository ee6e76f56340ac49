"""Everything that depends on uvicorn's internals lives here, and only here.

The harness drives `uvicorn.Server` through these members, which are not public API
and are checked by `integration_tests/test_uvicorn_contract.py` against the installed
release: ``Server.startup(sockets=)``, ``Server.main_loop``, ``Server.on_tick``,
``Server.shutdown``, ``Server.capture_signals``, ``Server.servers``,
``Server.server_state.connections`` / ``.tasks``, ``Server.lifespan`` (with
``.should_exit``, ``.shutdown()``), ``Config.load()``, ``Config.loaded_app``,
``Config.lifespan_class`` and ``Config.get_loop_factory()``.

What it changes, and why:

* `capture_signals` does nothing: a test harness must never take over Ctrl-C.
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
import inspect
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from uvicorn.config import LOOP_FACTORIES
from uvicorn.importer import ImportFromStringError, import_from_string

from uvicorn_testserver._logs import current_log, harness_logger

__all__ = ["REJECTED_OPTIONS", "HarnessServer", "StartupFailed", "check_options", "loop_factory", "make_config"]

AppType = Callable[..., Any] | str

#: uvicorn.Config options that make no sense for an in-process test server, and why.
REJECTED_OPTIONS: dict[str, str] = {
    "workers": "a test server runs in one thread; use several servers instead",
    "reload": "the test process owns the code; restart the server instead",
    "reload_dirs": "reload is not supported",
    "reload_includes": "reload is not supported",
    "reload_excludes": "reload is not supported",
    "reload_delay": "reload is not supported",
    "uds": "the harness binds a TCP socket itself",
    "fd": "the harness binds a TCP socket itself",
    "log_config": "the harness never reconfigures logging; read server.log or use caplog",
    "timeout_graceful_shutdown": "use shutdown_timeout",
    "app": "pass the app as the first argument",
    "host": "pass host as an argument of UvicornTestServer",
    "port": "pass port as an argument of UvicornTestServer",
    "log_level": "pass log_level as an argument of UvicornTestServer",
}

_CONFIG_PARAMETERS = frozenset(inspect.signature(uvicorn.Config.__init__).parameters) - {"self"}


def check_options(options: dict[str, Any]) -> None:
    """Raise `TypeError` for an option uvicorn does not know or the harness cannot honour."""
    for name in options:
        if name in REJECTED_OPTIONS:
            raise TypeError(f"UvicornTestServer does not accept {name!r}: {REJECTED_OPTIONS[name]}.")
        if name not in _CONFIG_PARAMETERS:
            known = ", ".join(sorted(_CONFIG_PARAMETERS - REJECTED_OPTIONS.keys()))
            raise TypeError(
                f"{name!r} is not an option of uvicorn.Config {uvicorn.__version__}; known options: {known}."
            )


def make_config(app: AppType, *, shutdown_timeout: float, options: dict[str, Any]) -> uvicorn.Config:
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


class StartupFailed(Exception):
    """Internal: startup failed; `reason` says why, `__cause__` is the app's exception if any."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _AppErrorRecorder:
    """ASGI middleware that reports unhandled app exceptions and re-raises them untouched."""

    def __init__(self, app: Any, on_error: Callable[[BaseException], None]) -> None:
        self.app = app
        self.on_error = on_error
        self.lifespan_error: BaseException | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if scope["type"] == "lifespan":
                self.lifespan_error = exc
            else:
                self.on_error(exc)
            raise


class HarnessServer(uvicorn.Server):
    """A `uvicorn.Server` that starts on a given socket, stops at once and never touches signals."""

    def __init__(self, config: uvicorn.Config, *, on_app_error: Callable[[BaseException], None]) -> None:
        self._exit_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_app_error = on_app_error
        self._recorder: _AppErrorRecorder | None = None
        super().__init__(config)

    # `should_exit` is set from the test's thread; wake the loop instead of waiting for a tick.
    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._loop is not None and self._exit_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed: nothing to wake
                self._loop.call_soon_threadsafe(self._exit_event.set)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def load(self) -> None:
        """Load the app and protocol classes; raise `StartupFailed` where uvicorn would exit."""
        config = self.config
        if isinstance(config.app, str):
            try:
                import_from_string(config.app)
            except ImportFromStringError as exc:
                raise StartupFailed(f"cannot import the app {config.app!r}: {exc}") from exc
            except Exception as exc:
                raise StartupFailed(f"importing the app {config.app!r} raised {exc!r}") from exc
        try:
            config.load()
        except SystemExit as exc:
            raise StartupFailed(_last_error_logged() or "uvicorn could not load the app") from exc
        except Exception as exc:
            raise StartupFailed(
                f"uvicorn could not load its configuration: {exc!r}. If it names an HTTP or WebSocket "
                f"implementation (http={config.http!r}, ws={config.ws!r}), install a version that matches "
                f"uvicorn {uvicorn.__version__} or pick another one"
            ) from exc
        self._recorder = _AppErrorRecorder(config.loaded_app, self._on_app_error)
        config.loaded_app = self._recorder

    async def start(self, sock: socket.socket) -> None:
        """Load, run lifespan startup and listen on `sock`; raise `StartupFailed` on failure."""
        self._loop = asyncio.get_running_loop()
        self._exit_event = asyncio.Event()
        if not self.config.loaded:
            self.load()
        self.lifespan = self.config.lifespan_class(self.config)
        try:
            await self.startup(sockets=[sock])
        except SystemExit as exc:
            app_error = self._recorder.lifespan_error if self._recorder else None
            if app_error is not None:
                raise StartupFailed(f"lifespan startup raised {app_error!r}") from app_error
            raise StartupFailed(
                f"lifespan startup failed: {_last_error_logged() or 'the app reported lifespan.startup.failed'}"
            ) from exc
        if self._recorder is not None:
            # An app without lifespan support raises on the lifespan scope; that is not an error.
            self._recorder.lifespan_error = None

    async def serve_until_exit(self, sock: socket.socket) -> None:
        """Serve until `should_exit`, then shut down gracefully (after a successful `start`)."""
        await self.main_loop()
        await self.shutdown(sockets=[sock])

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
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                await self._wait_until_drained()
        except TimeoutError:
            tasks = list(self.server_state.tasks)
            harness_logger.warning(
                "Cut %d request(s) still running after the %.1fs graceful shutdown timeout "
                "(an endless stream or a slow handler); cancelling them.",
                len(tasks),
                self.config.timeout_graceful_shutdown,
            )
            for task in tasks:
                task.cancel("cut by uvicorn-testserver at shutdown")
            await asyncio.gather(*tasks, return_exceptions=True)
        if not self.force_exit:
            await self.lifespan.shutdown()
            if self._recorder is not None and self._recorder.lifespan_error is not None:
                self._on_app_error(self._recorder.lifespan_error)

    async def _wait_until_drained(self) -> None:
        delay = 0.0005
        while (self.server_state.connections or self.server_state.tasks) and not self.force_exit:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)


@functools.cache
def _builtin_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    config = uvicorn.Config(_no_app, loop=name, log_config=None)
    return config.get_loop_factory()


def loop_factory(config: uvicorn.Config) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`config.get_loop_factory()`, resolved once per process for uvicorn's own loop names.

    uvicorn's "auto" tries ``import uvloop`` on every call; a failed import costs a
    search of sys.path, a large part of a start when it happens each time.
    """
    if isinstance(config.loop, str) and config.loop in LOOP_FACTORIES:
        return _builtin_loop_factory(config.loop)
    return config.get_loop_factory()


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("placeholder app used only to resolve a loop factory")


def _last_error_logged() -> str | None:
    """The message of the last ERROR record this server logged (uvicorn logs, then exits)."""
    log = current_log()
    if log is None:
        return None
    for record in reversed(log.records):
        if record.levelno >= logging.ERROR:
            return record.getMessage().strip()
    return None

"""`AsyncTestServer` and `create_test_server`: a live server for async tests, with a client.

Two modes. ``mode="thread"`` (the default) wraps `UvicornTestServer`: uvicorn runs on
its own loop in a thread, start and stop run in a worker thread, so the test's loop is
never blocked and a blocking client in the test still gets answers. ``mode="loop"``
runs uvicorn as a task on the test's own running loop, for apps that share loop-bound
objects (a connection pool, a queue) with the test; it reuses the harness's pieces, so
readiness, errors, log capture and the fast stop are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar

from uvicorn_testserver._client import AsyncTestClient
from uvicorn_testserver._errors import (
    ServerExceptionsError,
    ServerShutdownError,
    ServerStateError,
)
from uvicorn_testserver._logs import ServerLog
from uvicorn_testserver._loop import LoopRunner
from uvicorn_testserver._response import DEFAULT_TIMEOUT
from uvicorn_testserver._server import (
    LogLevel,
    UvicornTestServer,
    connect_host,
    describe_app,
)
from uvicorn_testserver._uvicorn import AppType

__all__ = ["AsyncServerMode", "AsyncTestServer", "create_test_server"]

AsyncServerMode = Literal["thread", "loop"]
"""Where an `AsyncTestServer` runs uvicorn: in its own thread, or in the test's event loop."""
_T = TypeVar("_T")


def _fastapi_app(lifespan: Callable[[Any], Any] | None) -> Any:
    try:
        from fastapi import FastAPI
    except ImportError as exc:
        raise ImportError(
            "AsyncTestServer and create_test_server() create a FastAPI app when no app is given, and FastAPI "
            'is not installed: pip install "uvicorn-testserver[fastapi]", or pass any ASGI app.',
            name="fastapi",
        ) from exc
    if lifespan is not None and inspect.isasyncgenfunction(lifespan):
        # A bare async generator, as fastapi-testing documented; Starlette deprecates that form.
        lifespan = contextlib.asynccontextmanager(lifespan)
    return FastAPI(lifespan=lifespan)


class AsyncTestServer:
    """A real uvicorn server for async tests, with an aiohttp-based `client`.

    With ``app=None`` a ``FastAPI(lifespan=lifespan)`` app is created at once, so routes
    can be added to `app` before or after start (FastAPI looks routes up per request;
    middleware only before the first start, as Starlette requires). Any ASGI app or
    import string may be passed instead; then a `lifespan` function is refused, while
    a string ``"auto"``, ``"on"`` or ``"off"`` is uvicorn's own lifespan option either
    way. `mode` is ``"thread"`` (the default) or ``"loop"``, see the module docstring.
    `host`, `port`, `health_path`, `raise_server_exceptions`, `log_level` and extra
    uvicorn options mean what they mean for `UvicornTestServer`; `client_timeout` is
    the client's default timeout.

    Use ``async with AsyncTestServer(...) as server`` or ``await start()`` / ``await
    stop()``. Failures raise the `ServerError` family: `ServerStartupError` from a start
    that fails (nothing is left running), `ServerExceptionsError` from the stop after
    the app raised while serving (with `raise_server_exceptions`). In loop mode a
    blocking call in the app blocks the test too, and a blocking client in the test
    (``requests``) cannot get an answer: run it with ``asyncio.to_thread``.
    """

    __test__ = False

    def __init__(
        self,
        app: AppType | None = None,
        *,
        lifespan: Callable[[Any], Any] | Literal["auto", "on", "off"] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        mode: AsyncServerMode = "thread",
        health_path: str | None = None,
        startup_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
        raise_server_exceptions: bool = True,
        log_level: LogLevel = "warning",
        client_timeout: float | None = DEFAULT_TIMEOUT,
        **uvicorn_options: Any,
    ) -> None:
        if mode not in ("thread", "loop"):
            raise ValueError(f"mode must be 'thread' or 'loop', not {mode!r}.")
        if mode == "loop" and "loop" in uvicorn_options:
            raise TypeError(
                "loop= picks the event loop of the server thread; with mode='loop' the server runs on yours."
            )
        if isinstance(lifespan, str):  # uvicorn's own option: "auto", "on" or "off"
            uvicorn_options["lifespan"], lifespan = lifespan, None
        if app is None:
            app = _fastapi_app(lifespan)
        elif lifespan is not None:
            raise TypeError(
                "lifespan= is for the FastAPI app created when no app is given; give your own app its lifespan."
            )
        self.app: Any = app
        self.mode: AsyncServerMode = mode
        self.client_timeout = client_timeout
        self._harness = UvicornTestServer(
            app,
            host,
            port,
            health_path=health_path,
            startup_timeout=startup_timeout,
            shutdown_timeout=shutdown_timeout,
            raise_server_exceptions=raise_server_exceptions,
            log_level=log_level,
            **uvicorn_options,
        )
        self._backend: _Backend = _ThreadBackend(self._harness) if mode == "thread" else LoopRunner(self._harness, port)
        self._client: AsyncTestClient | None = None

    # -- where it listens, and state ------------------------------------------------------

    @property
    def host(self) -> str:
        """The host the server binds."""
        return self._harness.host

    @property
    def port(self) -> int:
        """The port it listens on; raises `ServerStateError` before the first start with ``port=0``."""
        return self._backend.port

    @property
    def base_url(self) -> str:
        """``http://host:port``."""
        return f"http://{connect_host(self.host)}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port``."""
        return f"ws://{connect_host(self.host)}:{self.port}"

    def url(self, path: str = "/") -> str:
        """The absolute HTTP URL of `path`."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def client(self) -> AsyncTestClient:
        """The client of this run; raises `ServerStateError` unless the server is running."""
        if self._client is None:
            raise ServerStateError(
                f"{self!r} is not running, and its client exists only between start() and stop(). "
                "Use `async with create_test_server(...) as server:` or await server.start() first."
            )
        return self._client

    @property
    def is_running(self) -> bool:
        """True between a successful `start()` and `stop()` while the server serves."""
        return self._backend.is_running

    @property
    def errors(self) -> list[BaseException]:
        """Unhandled exceptions the app raised while serving, since the last start."""
        return self._backend.errors

    @property
    def log(self) -> ServerLog:
        """The log records this server emitted."""
        return self._harness.log

    def __repr__(self) -> str:
        try:
            port: int | str = self._backend.port
        except ServerStateError:
            port = "?"
        state = "running" if self.is_running else "stopped"
        return f"<AsyncTestServer mode={self.mode} app={describe_app(self.app)} {self.host}:{port} {state}>"

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start the server and wait until it answers; return the server.

        Never blocks the event loop. Raises `ServerStartupError` (the app's exception
        chained, the log tail in the message) if it fails or is not ready within
        `startup_timeout`, and `ServerStateError` if already running. Cancelling the
        start stops what was started before the cancellation propagates.
        """
        if self._client is not None:
            raise ServerStateError(f"{self!r} is already running at {self.base_url}; call stop() first.")
        await self._backend.start()
        self._client = AsyncTestClient(self.base_url, timeout=self.client_timeout)
        return self

    async def stop(self) -> None:
        """Close the client and everything it opened, then stop the server. Idempotent.

        Never blocks the event loop. Raises `ServerShutdownError` if the server does not
        end within `shutdown_timeout` (after a forced exit), then `ServerExceptionsError`
        if the app raised while serving and `raise_server_exceptions` is on.
        """
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.close()
        finally:
            await self._backend.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.stop()
            return
        try:
            await self.stop()
        except ServerExceptionsError as server_error:
            # The block's own failure stays the error; the app's exceptions are added to it.
            exc.add_note(str(server_error))


def create_test_server(
    app: AppType | None = None,
    *,
    lifespan: Callable[[Any], Any] | Literal["auto", "on", "off"] | None = None,
    **options: Any,
) -> AsyncTestServer:
    """An `AsyncTestServer` to use as ``async with create_test_server() as server:``.

    With no `app`, a ``FastAPI(lifespan=lifespan)`` app is created (FastAPI is the
    optional extra ``uvicorn-testserver[fastapi]``). `options` are those of
    `AsyncTestServer` (``mode``, ``startup_timeout``, ``port``, uvicorn options, ...).
    """
    return AsyncTestServer(app, lifespan=lifespan, **options)


# -- the two ways of running ----------------------------------------------------------------


class _Backend(Protocol):
    @property
    def port(self) -> int: ...
    @property
    def is_running(self) -> bool: ...
    @property
    def errors(self) -> list[BaseException]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


async def _in_thread(function: Callable[[], _T]) -> _T:
    """Run `function` in a worker thread; if the caller is cancelled, let it finish before re-raising."""
    future = asyncio.ensure_future(asyncio.to_thread(function))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})  # a thread cannot be interrupted; `function` has its own deadline
        if not future.cancelled():
            future.exception()  # retrieved here: the cancellation is what the caller gets
        raise


class _ThreadBackend:
    """`UvicornTestServer` in its thread, driven from a worker thread."""

    def __init__(self, harness: UvicornTestServer) -> None:
        self._harness = harness

    @property
    def port(self) -> int:
        return self._harness.port

    @property
    def is_running(self) -> bool:
        return self._harness.is_running

    @property
    def errors(self) -> list[BaseException]:
        return self._harness.errors

    async def start(self) -> None:
        try:
            await _in_thread(self._harness.start)
        except asyncio.CancelledError:
            # The start may have succeeded while the cancellation waited for it.
            with contextlib.suppress(ServerExceptionsError, ServerShutdownError):
                await _in_thread(self._harness.stop)
            raise

    async def stop(self) -> None:
        await _in_thread(self._harness.stop)

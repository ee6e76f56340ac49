"""`AsyncTestServer` and `create_test_server`: a live server for async tests, with a client.

The async face of the same lifecycle as `UvicornTestServer`, in any mode: ``"thread"``
(the default: uvicorn on its own loop in a thread), ``"loop"`` (uvicorn as a task on the
test's own running asyncio loop, for apps that share loop-bound objects with the test)
or ``"process"`` (a child process). Start and stop never block the test's loop: the
test's task awaits each step (`bridge`, through anyio), under asyncio and trio; loop mode
and the aiohttp-based `client` need asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, Unpack

import anyio
import sniffio

from uvicorn_testserver._client.client import AsyncTestClient
from uvicorn_testserver._client.response import DEFAULT_TIMEOUT
from uvicorn_testserver._core.engine import ServerCore
from uvicorn_testserver._core.errors import ServerStateError
from uvicorn_testserver._core.options import AsyncServerOptions, spelled_out
from uvicorn_testserver._core.run import Launch, RunFactory
from uvicorn_testserver._core.settings import AppType, Mode, ServerSettings, check_seconds
from uvicorn_testserver._faces import bridge
from uvicorn_testserver._faces.live import LiveServer, errors_noted_on
from uvicorn_testserver._runners.loop import LoopRun
from uvicorn_testserver._runners.process import ProcessRun
from uvicorn_testserver._runners.thread import ThreadRun

if TYPE_CHECKING:
    from websockets.asyncio.client import connect as WebSocketConnect

__all__ = ["AsyncServerMode", "AsyncTestServer", "create_test_server"]

AsyncServerMode = Mode
"""Where an `AsyncTestServer` runs uvicorn: its own thread, the test's event loop, or a child process."""


def _fastapi_app(lifespan: Callable[[Any], Any] | None) -> Any:
    try:
        from fastapi import FastAPI
    except ImportError as exc:
        raise ImportError(
            "AsyncTestServer and create_test_server() create a FastAPI app when no app is given, and FastAPI "
            "is not installed: pip install fastapi (the extra uvicorn-testserver[fastapi]), or pass any ASGI app.",
            name="fastapi",
        ) from exc
    if lifespan is not None and inspect.isasyncgenfunction(lifespan):
        # A bare async generator, as fastapi-testing documented; Starlette deprecates that form.
        lifespan = contextlib.asynccontextmanager(lifespan)
    return FastAPI(lifespan=lifespan)


class AsyncTestServer(LiveServer):
    """A real uvicorn server for async tests, with an aiohttp-based `client`.

    With ``app=None`` a ``FastAPI(lifespan=lifespan)`` app is created at once, so routes
    can be added to `app` before or after start (FastAPI looks routes up per request;
    middleware only before the first start, as Starlette requires). Any ASGI or WSGI app
    or import string may be passed instead; then a `lifespan` function is refused, while
    a string ``"auto"``, ``"on"`` or ``"off"`` is uvicorn's own lifespan option either
    way. `mode` is ``"thread"`` (the default), ``"loop"`` or ``"process"`` (see the module
    docstring). The other options mean what they mean for `UvicornTestServer`, with the
    same defaults; `client_timeout` is the client's default timeout.

    Use ``async with AsyncTestServer(...) as server`` or ``await start()`` / ``await
    stop()``. Failures raise the `ServerError` family: `ServerStartupError` from a start
    that fails (nothing is left running), `ServerExceptionsError` from the stop after
    the app raised while serving (with `raise_server_exceptions`). Cancelling a start or
    stop at any moment leaves nothing running. In loop mode a blocking call in the app
    blocks the test too, and a blocking client in the test (``requests``) cannot get an
    answer: run it with ``asyncio.to_thread``.
    """

    __test__ = False

    _core: ServerCore

    @spelled_out
    def __init__(
        self,
        app: AppType | None = None,
        *,
        lifespan: Callable[[Any], Any] | Literal["auto", "on", "off"] | None = None,
        mode: AsyncServerMode = "thread",
        client_timeout: float | None = DEFAULT_TIMEOUT,
        **options: Unpack[AsyncServerOptions],
    ) -> None:
        uvicorn_lifespan: dict[str, str] = {}
        if isinstance(lifespan, str):  # uvicorn's own option: "auto", "on" or "off"
            uvicorn_lifespan["lifespan"], lifespan = lifespan, None
        if app is None:
            if mode == "process":
                raise TypeError(
                    "mode='process' imports the app in a child process, so it needs an import string such as "
                    "'package.module:app'; the FastAPI app made when no app is given cannot cross over."
                )
            app = _fastapi_app(lifespan)
        elif lifespan is not None:
            raise TypeError(
                "lifespan= is for the FastAPI app created when no app is given; give your own app its lifespan."
            )
        settings = ServerSettings.build(app, mode=mode, options={**options, **uvicorn_lifespan})
        self.client_timeout = client_timeout
        self._core = ServerCore(settings, _RUNS[settings.mode])
        self._client: AsyncTestClient | None = None

    @property
    def app(self) -> Any:
        """The app as given, or the FastAPI app made when none was (add routes to it)."""
        return self._core.settings.app

    @property
    def client(self) -> AsyncTestClient:
        """The aiohttp-based client of this run (asyncio only); raises `ServerStateError` unless running."""
        if self._client is None:
            if self.is_running:
                raise ServerStateError(
                    f"{self!r} has no client under {sniffio.current_async_library()}: its aiohttp-based client "
                    "needs asyncio. Use httpx.AsyncClient(base_url=server.base_url) there instead."
                )
            raise ServerStateError(
                f"{self!r} is not running, and its client exists only between start() and stop(). "
                "Use `async with create_test_server(...) as server:` or await server.start() first."
            )
        return self._client

    def websocket_connect(self, path: str = "/", **options: Any) -> WebSocketConnect:
        """Open a WebSocket to `path` with the `websockets` library's asyncio client (asyncio only).

        Use it as ``async with server.websocket_connect("/ws") as ws:``. `options` go to
        ``websockets.asyncio.client.connect``; with TLS, ``ssl`` defaults to a context that
        trusts the CA, as `ssl_context` does, and offers HTTP/1.1 alone.
        Raises `ServerStateError` if the server is not running.
        """
        if not self.is_running:
            raise ServerStateError(f"{self!r} is not running; call start() before websocket_connect({path!r}).")
        from websockets.asyncio.client import connect

        if (context := self._http1_ssl_context()) is not None:
            options.setdefault("ssl", context)
        return connect(self.ws_url + (path if path.startswith("/") else "/" + path), **options)

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until the app handles no request or WebSocket, for example before a test resets a database.

        Idle keep-alive connections do not count. Raises `TimeoutError` naming what is still
        in flight after `timeout` seconds. Returns at once when the server is not running.
        """
        for pause in self._until_idle(timeout):
            await anyio.sleep(pause)  # under trio too

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> Self:
        """Start the server and wait until it answers; return the server.

        Never blocks the event loop. Raises `ServerStartupError` (the app's exception
        chained, the log tail in the message) if it fails or is not ready within
        `startup_timeout`, and `ServerStateError` if already running. Cancelling the
        start stops what was started before the cancellation propagates.
        """
        backend = sniffio.current_async_library()
        if self.mode == "loop" and backend != "asyncio":
            raise RuntimeError(
                f"mode='loop' runs uvicorn on the test's asyncio event loop, and this test runs under {backend}. "
                "Use mode='thread' (the default) or mode='process', which work under any anyio backend."
            )
        if self.is_running:
            raise ServerStateError(f"{self!r} is already running at {self.base_url}; call stop() first.")
        await bridge.start(self._core)
        if backend == "asyncio":
            self._client = AsyncTestClient(self.base_url, timeout=self.client_timeout, ssl=self._http1_ssl_context())
        return self

    async def stop(self, *, shutdown_timeout: float | None = None) -> None:
        """Close the client and everything it opened, then stop the server. Idempotent.

        The stop is `UvicornTestServer.stop`'s (through uvicorn's ``handle_exit``, with
        `stop_signal`); `shutdown_timeout`, if given, is the grace of this stop for
        requests in flight (0 or more). Never blocks the event loop. Raises
        `ServerShutdownError` if the server does not end within its bounds, then
        `ServerExceptionsError` if the app raised while serving and
        `raise_server_exceptions` is on: once per run, a later stop is a no-op. A
        cancellation lets the stop finish, then propagates instead of the app's
        errors, which stay in `errors`.
        """
        grace = None if shutdown_timeout is None else check_seconds("shutdown_timeout", shutdown_timeout)
        client, self._client = self._client, None
        interrupted: BaseException | None = None
        if client is not None:
            try:
                with anyio.CancelScope(shield=True):
                    await client.close()
            except anyio.get_cancelled_exc_class() as exc:  # a native asyncio cancellation: the stop goes on
                interrupted = exc
        await bridge.stop(self._core, grace, interrupted=interrupted)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with errors_noted_on(exc):
            await self.stop()


@spelled_out
def create_test_server(
    app: AppType | None = None,
    *,
    lifespan: Callable[[Any], Any] | Literal["auto", "on", "off"] | None = None,
    mode: AsyncServerMode = "thread",
    client_timeout: float | None = DEFAULT_TIMEOUT,
    **options: Unpack[AsyncServerOptions],
) -> AsyncTestServer:
    """An `AsyncTestServer` to use as ``async with create_test_server() as server:``.

    With no `app`, a ``FastAPI(lifespan=lifespan)`` app is created (FastAPI is the
    optional extra ``uvicorn-testserver[fastapi]``). `options` are those of
    `AsyncTestServer` (``mode``, ``startup_timeout``, ``port``, uvicorn options, ...).
    """
    return AsyncTestServer(app, lifespan=lifespan, mode=mode, client_timeout=client_timeout, **options)


def _loop_run(launch: Launch) -> LoopRun:
    return LoopRun(launch, asyncio.get_running_loop())  # a loop-mode start is driven on the caller's loop


# Not a method of the face: the core keeps its run factory, and a bound one would make a reference cycle.
_RUNS: dict[str, RunFactory] = {"thread": ThreadRun, "process": ProcessRun, "loop": _loop_run}

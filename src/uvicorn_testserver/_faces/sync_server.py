"""`UvicornTestServer`: the face for sync tests (and ``async with``), in thread or process mode."""

from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, Unpack

from uvicorn_testserver._core.engine import ServerCore
from uvicorn_testserver._core.errors import ServerStateError
from uvicorn_testserver._core.options import ServerOptions, spelled_out
from uvicorn_testserver._core.settings import DEFAULTS, AppType, ServerSettings, check_seconds
from uvicorn_testserver._faces.live import LiveServer, errors_noted_on
from uvicorn_testserver._runners.process import ProcessRun
from uvicorn_testserver._runners.thread import ThreadRun

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

__all__ = ["ProcessServer", "UvicornTestServer"]


class UvicornTestServer(LiveServer):
    """A real uvicorn server on a loopback socket, for sync and async tests.

    `app` is an ASGI application, a WSGI application (served through a2wsgi), or an
    import string such as ``"package.module:app"``. With ``port=0`` (the default) the
    harness binds a free port itself and hands the socket to uvicorn, so there is no
    find-then-bind race; `bind()` does that before `start()` when the URL is needed first.

    ``mode="thread"`` (the default) runs uvicorn in a daemon thread with its own event
    loop. ``mode="process"`` runs the app, given as an import string, in a child Python
    process (with `env` and `cwd`; `output`, `pid` and `returncode` tell what it did).
    ``ssl=True`` serves HTTPS/WSS with a throw-away CA (`ssl_context`, `ca_path`).
    ``http2=True`` serves HTTP/2 as well as HTTP/1.1 on the same port (ALPN ``h2`` over TLS,
    prior-knowledge h2c in cleartext); it needs zttp (the extra ``uvicorn-testserver[http2]``),
    and raises `ImportError` saying so without it.
    `health_path`, if set, must answer 2xx before `start()` returns. `stop_signal`
    (``"SIGTERM"``, or ``"SIGINT"``) is the signal whose handling `stop()` goes through,
    as under a process manager. Extra keyword
    arguments go to `uvicorn.Config` (``factory``, ``root_path``, ``http``, ``ws``,
    ``lifespan``, ...). Every option is checked here: a wrong one raises `TypeError` or
    `ValueError` before anything starts.

    Use it as ``with UvicornTestServer(app) as server:``, ``async with ...`` (under
    asyncio or trio; start and stop are awaited and never block the event
    loop), or call `start()` and `stop()` yourself. uvicorn's log is captured per server
    in `log` and still reaches the process's own logging (pytest's ``caplog`` included),
    unless ``propagate_logs=False`` keeps it in `log` alone.
    """

    _core: ServerCore

    @spelled_out
    def __init__(
        self,
        app: AppType,
        host: str = DEFAULTS["host"],
        port: int = DEFAULTS["port"],
        *,
        mode: Literal["thread", "process"] = "thread",
        **options: Unpack[ServerOptions],
    ) -> None:
        if mode not in ("thread", "process"):
            hint = " (mode='loop' runs on your event loop: use AsyncTestServer)" if str(mode) == "loop" else ""
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}{hint}.")
        settings = ServerSettings.build(app, mode=mode, options={"host": host, "port": port, **options})
        self._core = ServerCore(settings, ThreadRun if mode == "thread" else ProcessRun)

    def start(self) -> Self:
        """Start the server and block until it serves; return the server.

        Returns once lifespan startup completed and the socket is served (and
        `health_path`, if set, answered 2xx). Raises `ServerStartupError` (the app's
        exception chained, the log tail in the message) if the start fails or is not
        ready within `startup_timeout`, and nothing is left running; raises
        `ServerStateError` if already running.
        """
        self._core.start()
        return self

    def stop(self, *, shutdown_timeout: float | None = None) -> None:
        """Stop the server the way `stop_signal` stops uvicorn, and block until it has ended. Idempotent;
        safe before `start()`.

        The stop goes through uvicorn's own ``handle_exit`` (in process mode, the child
        gets the real signal), so what the app hooks there runs. In-flight requests may
        finish for up to `shutdown_timeout` seconds (the server's, unless given here for
        this stop: 0 or more), then they are cut and the log says which; idle keep-alive
        and WebSocket connections are closed, lifespan shutdown runs, then the exit is
        forced if needed (see "Modes" in the docs for the worst case per mode). Raises
        `ServerShutdownError` if it still does not end, or ended badly, and then, with
        `raise_server_exceptions`, `ServerExceptionsError` if the app raised while
        serving, always after the server has fully stopped. A run's errors are raised
        once: a later `stop()` is a no-op, and `errors` keeps them until the next start.
        If interrupted (Ctrl-C), the server stays tracked: call `stop()` again, or it is
        stopped at interpreter exit.
        """
        self._core.stop(None if shutdown_timeout is None else check_seconds("shutdown_timeout", shutdown_timeout))

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Block until the app handles no request or WebSocket, for example before a test resets a database.

        Idle keep-alive connections do not count. Raises `TimeoutError` naming what is still
        in flight after `timeout` seconds. Returns at once when the server is not running.
        """
        for pause in self._until_idle(timeout):
            time.sleep(pause)

    def websocket_connect(self, path: str = "/", **options: Any) -> ClientConnection:
        """Open a WebSocket to `path` with the `websockets` library's synchronous client.

        Blocks until the handshake completes (``open_timeout``, 10 s by default) and
        returns a ``websockets.sync.client.ClientConnection``; use it in a ``with`` block
        so it is closed. `options` go to ``websockets.sync.client.connect``; with TLS,
        ``ssl`` defaults to a context that trusts the CA, as `ssl_context` does, and offers
        HTTP/1.1 alone. Pass a timeout to ``recv(timeout=...)``.
        Raises `ServerStateError` if the server is not running.
        """
        if not self.is_running:
            raise ServerStateError(f"{self!r} is not running; call start() before websocket_connect({path!r}).")
        from websockets.sync.client import connect  # imported on first use: ~40 ms on every import otherwise

        url = self.ws_url + (path if path.startswith("/") else "/" + path)
        if (context := self._http1_ssl_context()) is not None:
            options.setdefault("ssl", context)
        connection: ClientConnection = connect(url, **options)  # its overloads give Any with **options
        return connection

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with errors_noted_on(exc):
            self.stop()

    async def __aenter__(self) -> Self:
        from uvicorn_testserver._faces import bridge  # anyio: only for async tests

        await bridge.start(self._core)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from uvicorn_testserver._faces import bridge

        with errors_noted_on(exc):
            await bridge.stop(self._core)


class ProcessServer(UvicornTestServer):
    """`UvicornTestServer` with ``mode="process"``, for type checkers and readers: the app runs in a child process.

    The same class and engine; only the mode is fixed. `app` must be an import string
    (the child imports it); every JSON-serialisable uvicorn option works. `env` adds
    environment variables to the child's (a copy of the test process's), `cwd` sets its
    working directory; the child also gets the test process's ``sys.path``.
    """

    @spelled_out
    def __init__(
        self, app: str, host: str = DEFAULTS["host"], port: int = DEFAULTS["port"], **options: Unpack[ServerOptions]
    ) -> None:
        if "mode" in options:
            raise ValueError("ProcessServer always runs the app in a child process; it takes no mode=.")
        super().__init__(app, host, port, mode="process", **options)

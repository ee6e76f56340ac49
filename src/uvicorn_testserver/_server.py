"""`UvicornTestServer`: a real uvicorn server in a daemon thread, for sync and async tests."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import errno
import http.client
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from uvicorn_testserver._errors import (
    PortInUseError,
    ServerExceptionsError,
    ServerShutdownError,
    ServerStartupError,
    ServerStateError,
)
from uvicorn_testserver._logs import ServerLog, capture_into, harness_logger, install_capture, log_level_lease
from uvicorn_testserver._tls import server_tls
from uvicorn_testserver._uvicorn import (
    AppType,
    HarnessServer,
    StartupFailed,
    check_options,
    loop_factory,
    make_config,
)
from uvicorn_testserver._wsgi import WSGIAdapter, WSGIFactory, serve_app

if TYPE_CHECKING:
    import ssl as ssl_module
    from pathlib import Path

    from websockets.sync.client import ClientConnection

__all__ = ["LogLevel", "UvicornTestServer", "bind_socket", "connect_host", "describe_app"]

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
"""The `log_level` names a server accepts, most to least severe, as uvicorn spells them."""
_LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}
# Extra time stop() gives lifespan shutdown after the graceful drain, and a forced exit after that.
_STOP_MARGIN = 1.0
# A forced exit needs the server thread scheduled once more; shared CI machines stall for seconds.
_FORCE_GRACE = 3.0


@dataclass(eq=False)
class LoopTask:
    """The main task of an event loop that runs in another thread, cancellable from outside.

    A cancel that comes before the task exists is not lost: `bind` reports it.
    """

    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    cancelled: bool = False

    def bind(self) -> bool:
        """Called first in the task: record its loop and itself; False if it was cancelled already."""
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        return not self.cancelled

    def cancel(self) -> None:
        """Cancel the task from another thread, or, if it does not exist yet, make `bind` refuse."""
        self.cancelled = True
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(task.cancel)


@dataclass(eq=False)
class _Run:
    """One start() .. stop() of a server: everything that must be released at the end."""

    server: HarnessServer
    sock: socket.socket
    cleanup: ExitStack
    ready: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)
    thread: threading.Thread | None = None
    main: LoopTask = field(default_factory=LoopTask)
    crash: BaseException | None = None

    def settle(self, timeout: float = 1.0) -> None:
        """From another thread, wait (up to `timeout`) until the server's loop finishes the step it is in."""
        loop, thread = self.main.loop, self.thread
        if loop is None or thread is None or thread is threading.current_thread() or not loop.is_running():
            return
        done = threading.Event()
        try:
            loop.call_soon_threadsafe(done.set)
        except RuntimeError:  # the loop has just closed: nothing is left to finish
            return
        done.wait(timeout)


class UvicornTestServer:
    """A real uvicorn server on a loopback socket, run in a daemon thread with its own event loop.

    `app` is an ASGI application or an import string such as ``"package.module:app"``.
    With ``port=0`` (the default) the harness binds a free port itself and hands the
    socket to uvicorn, so there is no find-then-bind race. Extra keyword arguments go to
    `uvicorn.Config` (``factory``, ``root_path``, ``http``, ``ws``, ``lifespan``, ...);
    options that make no sense in a test, such as ``workers`` or ``reload``, raise
    `TypeError`.

    Use it as ``with UvicornTestServer(app) as server:``, ``async with ...`` (start and
    stop then run in a worker thread and never block the event loop), or call `start()`
    and `stop()` yourself. uvicorn's log is captured per server in `log` and still
    reaches the process's own logging (pytest's ``caplog`` included); the process's
    logging configuration is never changed.

    A WSGI app (Flask, ...) is served through a2wsgi: detected for app objects, or
    chosen with ``interface="wsgi"`` (see `uvicorn_testserver._wsgi`). ``ssl=True``
    serves HTTPS/WSS with a throw-away CA (`ssl_context`, `ca_path`). ``mode="process"``
    runs the app, given as an import string, in a child Python process instead of a
    thread, and returns a `ProcessServer`.
    """

    def __new__(cls, *args: Any, mode: Literal["thread", "process"] = "thread", **kwargs: Any) -> Self:
        # mode="process" makes the subclass that runs the app in a child process (_process.py);
        # type checkers see a UvicornTestServer: construct ProcessServer directly for its extras.
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}.")
        if mode == "process" and cls is UvicornTestServer:
            from uvicorn_testserver._process import ProcessServer

            return super().__new__(ProcessServer)  # type: ignore[return-value]  # a subclass of cls
        return super().__new__(cls)

    def __init__(
        self,
        app: AppType,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        mode: Literal["thread", "process"] = "thread",
        ssl: bool = False,
        health_path: str | None = None,
        startup_timeout: float = 10.0,
        shutdown_timeout: float = 5.0,
        raise_server_exceptions: bool = True,
        log_level: LogLevel = "warning",
        **uvicorn_options: Any,
    ) -> None:
        misplaced = sorted({"env", "cwd"} & uvicorn_options.keys())
        if misplaced and mode == "thread":
            raise TypeError(f"{' and '.join(misplaced)} apply to mode='process' only: a thread shares the test's.")
        check_options(uvicorn_options)
        if log_level not in _LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(_LEVELS)}, not {log_level!r}.")
        if not isinstance(app, str) and not callable(app):
            raise TypeError(
                f"app must be an ASGI application or an import string like 'package.module:app', "
                f"not {type(app).__name__}."
            )
        self.app = app
        self._host = host
        self._requested_port = port
        self._port = port
        self.health_path = health_path
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.raise_server_exceptions = raise_server_exceptions
        self.log_level = log_level
        self.uvicorn_options = uvicorn_options
        self._log = ServerLog()
        self._log.drop_access_log = uvicorn_options.get("access_log") is False
        self._log.level = _LEVELS[log_level]
        self._errors: list[BaseException] = []
        self._run: _Run | None = None
        self._lock = threading.Lock()
        self._tls = server_tls(ssl, uvicorn_options, host)
        # WSGI apps are served through a2wsgi (_wsgi.py); anything else goes to uvicorn untouched.
        self._served_app, self._served_options = serve_app(app, uvicorn_options)

    # -- where it listens ---------------------------------------------------------------

    @property
    def host(self) -> str:
        """The host the server binds."""
        return self._host

    @property
    def port(self) -> int:
        """The port the server listens on (the one bound last, once started).

        Raises `ServerStateError` if the port is still 0 because `start()` has not run.
        """
        if self._port == 0:
            raise ServerStateError(f"{self!r} has no port yet: port=0 picks a free one in start(); call start() first.")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port`` (``https://`` with TLS), for any HTTP client."""
        return f"{self._scheme()}://{self._connect_host()}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS), for WebSocket clients."""
        return f"{'wss' if self._scheme() == 'https' else 'ws'}://{self._connect_host()}:{self.port}"

    def url(self, path: str = "/") -> str:
        """The absolute HTTP URL of `path` (a leading ``/`` is added if missing)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def websocket_connect(self, path: str = "/", **options: Any) -> ClientConnection:
        """Open a WebSocket to `path` with the `websockets` library's synchronous client.

        Blocks until the handshake completes (``open_timeout``, 10 s by default) and
        returns a ``websockets.sync.client.ClientConnection``; use it in a ``with`` block
        so it is closed. `options` go to ``websockets.sync.client.connect``
        (``subprotocols``, ``additional_headers``, ``open_timeout``, ...). Pass a timeout to
        ``recv(timeout=...)``: without one it waits for as long as the server stays silent.
        Raises `ServerStateError` if the server is not running.
        """
        if not self.is_running:
            raise ServerStateError(f"{self!r} is not running; call start() before websocket_connect({path!r}).")
        from websockets.sync.client import connect  # imported on first use: ~40 ms on every import otherwise

        url = self.ws_url + (path if path.startswith("/") else "/" + path)
        if self._tls is not None:
            options.setdefault("ssl", self.ssl_context)
        connection: ClientConnection = connect(url, **options)  # its overloads give Any with **options
        return connection

    def _scheme(self) -> str:
        return "https" if self._tls is not None or self.uvicorn_options.get("ssl_certfile") else "http"

    @property
    def ssl_context(self) -> ssl_module.SSLContext:
        """With ``ssl=True``: a client `ssl.SSLContext` that trusts the server's throw-away CA.

        Verification and hostname checks stay on. Available before `start()` and the
        same object across restarts (the CA lives as long as the server object). Raises
        `ServerStateError` without ``ssl=True``.
        """
        if self._tls is None:
            raise ServerStateError(f"{self!r} has no ssl_context: pass ssl=True to serve HTTPS with a throw-away CA.")
        return self._tls.client_context()

    @property
    def ca_path(self) -> Path:
        """With ``ssl=True``: the CA certificate file (PEM) while the server runs, for ``verify=`` and the like.

        The file is removed by `stop()`. Raises `ServerStateError` without ``ssl=True``
        or when the server is not running.
        """
        path = self._tls.ca_path if self._tls is not None else None
        if path is None:
            state = "is not running; start() writes the CA file" if self._tls else "does not use ssl=True"
            raise ServerStateError(f"{self!r} has no ca_path: it {state}.")
        return path

    def _health_connection(self, timeout: float) -> http.client.HTTPConnection:
        """A connection for the health check, over TLS when the server serves HTTPS."""
        host = self._connect_host().strip("[]")
        if self._scheme() == "http":
            return http.client.HTTPConnection(host, self._port, timeout=timeout)
        import ssl

        # A user's own certificate is not verified here: this checks readiness, not trust.
        context = self._tls.client_context() if self._tls is not None else ssl._create_unverified_context()
        return http.client.HTTPSConnection(host, self._port, timeout=timeout, context=context)

    def _connect_host(self) -> str:
        return connect_host(self._host)

    # -- state ----------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True between a successful `start()` and `stop()`, while the server thread lives."""
        run = self._run
        return run is not None and run.thread is not None and run.thread.is_alive() and run.server.started

    @property
    def errors(self) -> list[BaseException]:
        """Unhandled exceptions the app raised while serving, since the last `start()`.

        Each keeps its ``__traceback__``. A response the app chose (an ``HTTPException``
        with status 500, say) is not an error.
        """
        run = self._run
        if run is not None:
            # Starlette sends the 500 before it re-raises: a client can see the response before
            # the error is recorded. The rest of the loop's current step records it.
            run.settle()
        return list(self._errors)

    @property
    def log(self) -> ServerLog:
        """The log records this server emitted (uvicorn's error and access loggers)."""
        return self._log

    def __repr__(self) -> str:
        port = self._port or "?"
        state = "running" if self.is_running else "stopped"
        return f"<UvicornTestServer app={self._app_name()} {self._host}:{port} {state}>"

    def _app_name(self) -> str:
        return describe_app(self.app)

    # -- start ----------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and block until it really answers; return the server.

        Returns once uvicorn listens, lifespan startup has completed and, if
        `health_path` is set, that path answered 2xx. Raises `ServerStartupError`
        (`PortInUseError` for a taken fixed port) with the app's exception chained and
        the log tail if the server fails or is not ready within `startup_timeout`;
        nothing is left running then. Raises `ServerStateError` if already running.
        """
        with self._lock:
            if self._run is not None:
                raise ServerStateError(f"{self!r} is already running at {self.base_url}; call stop() first.")
            started_at = time.monotonic()
            run = self._prepare()
            try:
                self._wait_ready(run, started_at)
            except BaseException:
                self._stop_run(run)
                raise
            self._run = run
            _running.add(self)
        return self

    def _prepare(self) -> _Run:
        install_capture()
        self._errors.clear()
        sock = self._bind()
        cleanup = ExitStack()
        cleanup.callback(sock.close)
        cleanup.enter_context(log_level_lease(_LEVELS[self.log_level]))
        try:
            with capture_into(self._log):
                config = make_config(
                    self._served_app, shutdown_timeout=self.shutdown_timeout, options=self._run_options(cleanup)
                )
            run = _Run(HarnessServer(config, on_app_error=self._errors.append), sock, cleanup)
            run.thread = threading.Thread(
                target=self._thread_main,
                args=(run,),
                name=f"uvicorn-testserver {self._host}:{self._port}",
                daemon=True,
            )
            run.thread.start()
        except BaseException:
            cleanup.close()
            raise
        return run

    def _run_options(self, cleanup: ExitStack) -> dict[str, Any]:
        """uvicorn options for one run; what the run creates (TLS files, WSGI threads) is released by `cleanup`."""
        options = dict(self._served_options)
        if isinstance(self._served_app, WSGIAdapter | WSGIFactory):
            cleanup.callback(self._served_app.close, self.shutdown_timeout)
        if self._tls is not None:
            cleanup.callback(self._tls.remove_files)
            options.update(self._tls.write_files())
        return options

    def _bind(self) -> socket.socket:
        # Restarting a port=0 server tries its previous port first, so URLs stay valid.
        previous = self._port if self._requested_port == 0 else 0
        sock = bind_socket(self._host, self._requested_port, app_name=self._app_name(), previous_port=previous)
        self._port = sock.getsockname()[1]
        return sock

    def _thread_main(self, run: _Run) -> None:
        with capture_into(self._log):
            try:
                factory = loop_factory(run.server.config)
                with asyncio.Runner(loop_factory=factory) as runner:
                    runner.run(self._serve(run))
            except StartupFailed as exc:  # the event loop could not be created
                run.ready.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001 - reported by start() or stop(), never lost
                run.crash = exc
            finally:
                if not run.ready.done():
                    failure = StartupFailed(f"the server thread ended before the server was ready: {run.crash!r}")
                    failure.__cause__ = run.crash
                    run.ready.set_exception(failure)

    async def _serve(self, run: _Run) -> None:
        if run.main.bind():  # else start() gave up before this thread got this far
            await run.server.serve_on(run.sock, run.ready)

    def _wait_ready(self, run: _Run, started_at: float) -> None:
        deadline = started_at + self.startup_timeout
        try:
            run.ready.result(timeout=max(0.0, deadline - time.monotonic()))
        except StartupFailed as exc:
            raise self._startup_error(f"failed to start: {exc.reason}", started_at) from exc.__cause__
        except concurrent.futures.TimeoutError:
            raise self._startup_error(
                f"was not ready within startup_timeout={self.startup_timeout}s: lifespan startup or loading "
                "the app did not finish. Look for a blocking call or an await that never returns in the "
                "app's startup, or raise startup_timeout",
                started_at,
            ) from None
        if self.health_path is not None:

            def ended() -> ServerStartupError | None:
                if run.thread is None or run.thread.is_alive():
                    return None
                error = self._startup_error(f"stopped while waiting for {self.health_path} to answer 2xx", started_at)
                error.__cause__ = run.crash
                return error

            self._wait_healthy(deadline, ended, lambda what: self._startup_error(what, started_at))

    def _wait_healthy(
        self,
        deadline: float,
        ended: Callable[[], ServerStartupError | None],
        failed: Callable[[str], ServerStartupError],
    ) -> None:
        """Poll GET `health_path` with a short back-off until it answers 2xx.

        Raises what `ended()` returns once the server is gone, or `failed(what)` at `deadline`.
        """
        delay = 0.002
        answered = ""  # the last answer, which says more than a last try that timed out
        while True:
            error = ended()
            if error is not None:
                raise error
            status, last = self._probe_health(deadline)
            if status is not None:
                if 200 <= status < 300:
                    return
                answered = last
            else:
                last = f"{answered}; the last try raised {last}" if answered else f"the last try raised {last}"
            if time.monotonic() + delay >= deadline:
                raise failed(
                    f"health check GET {self.health_path} did not answer 2xx within "
                    f"startup_timeout={self.startup_timeout}s ({last}). Check the route and what it depends on, "
                    "or raise startup_timeout"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _probe_health(self, deadline: float) -> tuple[int | None, str]:
        """GET `health_path` once; return the status and what it answered, or None and the error."""
        connection = self._health_connection(timeout=max(0.1, deadline - time.monotonic()))
        try:
            connection.request("GET", str(self.health_path))
            response = connection.getresponse()
            response.read()
            return response.status, f"it answered {response.status} {response.reason}"
        except (OSError, http.client.HTTPException) as exc:
            return None, repr(exc)
        finally:
            connection.close()

    def _startup_error(self, what: str, started_at: float) -> ServerStartupError:
        elapsed = time.monotonic() - started_at
        return ServerStartupError(
            f"uvicorn server for {self._app_name()} on {self._host}:{self._port} {what} (after {elapsed:.3f}s).",
            host=self._host,
            port=self._port,
            app=self._app_name(),
            elapsed=elapsed,
            log_tail=self._log.tail(),
        )

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the server and block until its thread has ended. Idempotent; safe before `start()`.

        In-flight requests may finish for up to `shutdown_timeout` seconds; idle
        keep-alive and WebSocket connections are closed, lifespan shutdown runs, then
        the exit is forced if needed. Raises `ServerShutdownError` if the thread still
        does not end, and then, with `raise_server_exceptions`, `ServerExceptionsError`
        if the app raised while serving — always after the server has fully stopped.
        """
        with self._lock:
            run, self._run = self._run, None
            if run is None:
                return
            _running.discard(self)
            self._stop_run(run)
        self._raise_app_errors()

    def _raise_app_errors(self) -> None:
        """After a stop: raise `ServerExceptionsError` for the app's errors, if told to."""
        if self.raise_server_exceptions and self._errors:
            raise ServerExceptionsError(
                self._errors,
                host=self._host,
                port=self._port,
                app=self._app_name(),
                log_tail=self._log.tail(),
            ) from self._errors[0]

    def _stop_run(self, run: _Run) -> None:
        """Stop `run`'s thread and release what it holds; also used after a failed start."""
        started_at = time.monotonic()
        thread = run.thread
        try:
            if thread is None:
                return
            run.server.should_exit = True
            if not run.server.started:
                run.main.cancel()  # still starting (a startup that hangs): abort it
            thread.join(self.shutdown_timeout + _STOP_MARGIN)
            forced = thread.is_alive()
            if forced:
                log_forced_exit(self._log, self.shutdown_timeout)
                run.server.force_exit = True
                run.main.cancel()
                thread.join(_FORCE_GRACE)
            if thread.is_alive():
                elapsed = time.monotonic() - started_at
                raise ServerShutdownError(
                    f"uvicorn server for {self._app_name()} on {self._host}:{self._port} did not stop within "
                    f"{elapsed:.1f}s (shutdown_timeout={self.shutdown_timeout}s, then a forced exit). Something "
                    "blocks its event loop: a synchronous sleep or blocking I/O in an async handler or in lifespan "
                    "shutdown. The daemon thread is left behind.",
                    host=self._host,
                    port=self._port,
                    app=self._app_name(),
                    elapsed=elapsed,
                    log_tail=self._log.tail(),
                )
            # A forced exit cancels the server's task: that CancelledError is the harness's, not a crash.
            cancelled_by_us = forced and isinstance(run.crash, asyncio.CancelledError)
            if run.crash is not None and not cancelled_by_us and run.ready.done() and run.ready.exception() is None:
                raise ServerShutdownError(
                    f"the event loop of the uvicorn server for {self._app_name()} on {self._host}:{self._port} "
                    f"crashed while serving: {run.crash!r}.",
                    host=self._host,
                    port=self._port,
                    app=self._app_name(),
                    log_tail=self._log.tail(),
                ) from run.crash
        finally:
            run.cleanup.close()

    # -- context managers -----------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_after(exc, self.stop)

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self._stop_after, exc, self.stop)

    @staticmethod
    def _stop_after(body_error: BaseException | None, stop: Callable[[], None]) -> None:
        """Stop; if the block already failed, add the app's errors to that failure instead of replacing it."""
        if body_error is None:
            stop()
            return
        try:
            stop()
        except ServerExceptionsError as server_error:
            body_error.add_note(str(server_error))


def log_forced_exit(log: ServerLog, shutdown_timeout: float) -> None:
    """Record in the server's `log` that its graceful stop overran and its exit is being forced."""
    with capture_into(log):
        harness_logger.warning(
            "The server did not stop within shutdown_timeout=%ss; forcing its exit.", shutdown_timeout
        )


def connect_host(host: str) -> str:
    """The host a client connects to for a server bound to `host` (a wildcard becomes loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def describe_app(app: AppType) -> str:
    """The app as error messages name it: the import string, or ``module.QualName``."""
    if isinstance(app, str):
        return repr(app)
    name = getattr(app, "__qualname__", None) or type(app).__qualname__
    return f"{getattr(app, '__module__', '?')}.{name}"


def bind_socket(host: str, port: int, *, app_name: str, previous_port: int = 0) -> socket.socket:
    """Bind and listen on `host`:`port` (0 picks a free port); raise `ServerStartupError` if that fails.

    With ``port=0`` and a `previous_port`, that port is tried first and a fresh one taken
    if it is gone. Shared by the thread harness and the async server's loop mode.
    """
    ports = [previous_port, 0] if port == 0 and previous_port != 0 else [port]
    for candidate in ports:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host or None, candidate, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise ServerStartupError(
                f"cannot resolve host {host!r} for {app_name}: {exc}. Use an IP address such as 127.0.0.1.",
                host=host,
                port=candidate,
                app=app_name,
            ) from exc
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)  # listen at once: clients that connect early queue instead of failing
        except OSError as exc:
            sock.close()
            if candidate != port:
                continue  # the previous port is gone; take a fresh one
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"cannot serve {app_name} on {host}:{candidate}: the port is already in use. "
                    "Pass port=0 to get a free port, or stop whatever listens there.",
                    host=host,
                    port=candidate,
                    app=app_name,
                    elapsed=0.0,
                ) from exc
            raise ServerStartupError(
                f"cannot bind {host}:{candidate} for {app_name}: {exc}.",
                host=host,
                port=candidate,
                app=app_name,
                elapsed=0.0,
            ) from exc
        return sock
    raise AssertionError("unreachable: the last candidate port is the requested one")


# Servers still running at interpreter exit are stopped, so their threads end cleanly.
_running: weakref.WeakSet[UvicornTestServer] = weakref.WeakSet()


@atexit.register
def _stop_all_servers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):  # nothing is left to report to at exit
            server.stop()

"""`LiveServer`: where a server listens and what it recorded, the accessors every face shares."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from uvicorn_testserver._core.app_errors import InFlight
from uvicorn_testserver._core.errors import (
    ServerExceptionsError,
    ServerStateError,
    error_is_of,
    expected_count,
    expected_count_problem,
)
from uvicorn_testserver._core.logs import ServerLog
from uvicorn_testserver._core.run import AnyRun
from uvicorn_testserver._core.settings import ServerSettings, ServerURL, check_seconds, server_url
from uvicorn_testserver._core.tls import ClientTLS
from uvicorn_testserver._runners.process import ProcessRun

if TYPE_CHECKING:
    import ssl as ssl_module


__all__ = ["LiveServer", "Served", "errors_noted_on"]


class Served(Protocol):
    """What the accessors read: a server's `ServerCore` in this process, or a view of one in another
    (the run's shared server)."""

    settings: ServerSettings
    log: ServerLog
    last_run: AnyRun | None

    @property
    def app_errors(self) -> list[BaseException]: ...
    @property
    def port(self) -> int: ...
    @property
    def scheme(self) -> str: ...
    @property
    def client_tls(self) -> ClientTLS | None: ...
    @property
    def is_running(self) -> bool: ...
    @property
    def errors(self) -> list[BaseException]: ...
    def where(self) -> str: ...
    def bind(self) -> int: ...
    def settle(self) -> None: ...
    def in_flight(self) -> list[InFlight]: ...
    def served_when_raised(self, error: BaseException) -> str: ...


# -- the accessors every face shares ------------------------------------------------------------


class LiveServer:
    """Where a server listens and what it recorded: the accessors every face shares."""

    _core: Served

    @property
    def app(self) -> Any:
        """The app as given (an import string or an app object)."""
        return self._core.settings.app

    @property
    def mode(self) -> str:
        """Where uvicorn runs: ``"thread"``, ``"loop"`` or ``"process"``."""
        return self._core.settings.mode

    @property
    def host(self) -> str:
        """The host the server binds."""
        return self._core.settings.host

    @property
    def http2(self) -> bool:
        """Whether the server offers HTTP/2 (ALPN ``h2`` over TLS, h2c with prior knowledge) beside HTTP/1.1."""
        return self._core.settings.http2

    @property
    def health_path(self) -> str | None:
        """The path that must answer 2xx before `start()` returns, or None."""
        return self._core.settings.health_path

    @property
    def startup_timeout(self) -> float:
        """Seconds a start may take before it fails with `ServerStartupError`."""
        return self._core.settings.startup_timeout

    @property
    def shutdown_timeout(self) -> float:
        """Seconds in-flight requests get to finish at `stop()` before they are cut."""
        return self._core.settings.shutdown_timeout

    @property
    def raise_server_exceptions(self) -> bool:
        """Whether `stop()` raises `ServerExceptionsError` for the app's unhandled exceptions."""
        return self._core.settings.raise_server_exceptions

    @property
    def propagate_logs(self) -> bool:
        """Whether the server's records also reach the process's logging (pytest's ``caplog`` included)."""
        return self._core.settings.propagate_logs

    @property
    def log_level(self) -> str:
        """The least severe level of the server's records that are kept and passed on."""
        return self._core.settings.log_level

    @property
    def uvicorn_options(self) -> dict[str, Any]:
        """The extra `uvicorn.Config` options, as given (a copy)."""
        return dict(self._core.settings.uvicorn_options)

    @property
    def port(self) -> int:
        """The port it listens on. Raises `ServerStateError` while it is 0: call `bind()` or `start()` first."""
        return self._core.port

    def bind(self) -> int:
        """Bind the listening socket now and return its port, so URLs can be built before `start()`.

        Race-free: the socket stays bound, and listening, until `stop()`; clients that
        connect before `start()` queue and are served once it has started. Idempotent;
        `start()` binds by itself when this was not called.
        """
        return self._core.bind()

    @property
    def base_url(self) -> str:
        """``http://host:port`` (``https://`` with TLS), for any HTTP client."""
        return server_url(self._core.scheme, self.host, self.port)

    @property
    def ws_url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS), for WebSocket clients."""
        return server_url("wss" if self._core.scheme == "https" else "ws", self.host, self.port)

    @property
    def url(self) -> ServerURL:
        """``server.url("/path")``: the absolute HTTP URL of a path (a leading ``/`` is added if missing).

        Also the base URL as a string: ``f"{server.url}/path"`` works (see `ServerURL`).
        """
        return server_url(self._core.scheme, self.host, self.port)

    @property
    def ssl_context(self) -> ssl_module.SSLContext:
        """With ``ssl=True``: a client `ssl.SSLContext` that trusts the server's throw-away CA.

        Verification and hostname checks stay on. Available before `start()` and the
        same object across restarts (the CA lives as long as the server object). Raises
        `ServerStateError` without ``ssl=True``. An HTTP/2 client such as httpx sets ALPN
        on the context it is given, which then offers ``h2`` to every client sharing it.
        """
        tls = self._core.client_tls
        if tls is None:
            raise ServerStateError(f"{self!r} has no ssl_context: pass ssl=True to serve HTTPS with a throw-away CA.")
        return tls.client_context()

    def _http1_ssl_context(self) -> ssl_module.SSLContext | None:
        """With ``ssl=True``: the context of the harness's own HTTP/1.1 clients (see `ServerTLS.http1_context`)."""
        tls = self._core.settings.tls
        return tls.http1_context() if tls is not None else None

    @property
    def ca_path(self) -> Path:
        """With ``ssl=True``: the CA certificate file (PEM) while the server runs, for ``verify=`` and the like.

        The file is removed by `stop()`. Raises `ServerStateError` without ``ssl=True``
        or when the server is not running.
        """
        tls = self._core.client_tls
        path = tls.ca_path if tls is not None else None
        if path is None:
            state = "is not running; start() writes the CA file" if tls else "does not use ssl=True"
            raise ServerStateError(f"{self!r} has no ca_path: it {state}.")
        return path

    @property
    def is_running(self) -> bool:
        """True between a successful `start()` and `stop()` while the server serves."""
        return self._core.is_running

    @property
    def errors(self) -> list[BaseException]:
        """Unhandled exceptions the app raised while serving, since the last start.

        Complete up to the response a client has just read: reading it waits (briefly)
        until the server has finished the step it was in. In process mode they are
        `ChildAppError`s, the traceback carried as text.
        """
        return self._core.errors

    @property
    def log(self) -> ServerLog:
        """The log records this server emitted (see `ServerLog`)."""
        return self._core.log

    def in_flight(self) -> list[str]:
        """What the app is handling now, one line each: ``"GET /events (running 2.0s)"``.

        Blocks briefly (see `settle`); empty when the server is not running.
        """
        now = time.monotonic()
        return [request.describe(now) for request in self._core.in_flight()]

    def _until_idle(self, timeout: float) -> Iterator[float]:
        """The pauses of `wait_idle` (the faces sleep them their own way); `TimeoutError` at the deadline."""
        timeout = check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while busy := self._core.in_flight():
            if time.monotonic() + delay > deadline:
                now = time.monotonic()
                still = "; ".join(request.describe(now) for request in busy)
                raise TimeoutError(f"{self!r} was not idle within {timeout}s: still handling {still}.")
            yield delay
            delay = min(delay * 2, 0.05)

    def served_when_raised(self, error: BaseException) -> str:
        """What the app was serving when it raised `error`, one of `errors` (``"GET /divide"``), or ''."""
        return self._core.served_when_raised(error)

    @contextlib.contextmanager
    def expect_errors(
        self, *types: type[BaseException], at_least: int = 1, at_most: int | None = None
    ) -> Iterator[list[BaseException]]:
        """Expect the app to raise errors of `types` while the block runs; yield the list they end up in.

        At the end of the block the errors of `types` the app raised meanwhile are taken
        out of `errors` (so `stop()` does not raise them) and put in the list. Raises
        `AssertionError` if there were fewer than `at_least` (1 by default; 0 allows the
        errors without requiring them) or more than `at_most` (no limit by default).
        Errors of other types stay, and fail the test as usual. In process mode an error
        matches by its type's name. Blocks briefly at the end (see `settle`).
        """
        expected_count(types, at_least, at_most)
        since = len(self._core.app_errors)
        expected: list[BaseException] = []
        yield expected
        self._core.settle()
        errors = self._core.app_errors
        expected.extend(error for error in errors[since:] if error_is_of(error, types))
        for error in expected:
            errors.remove(error)
        problem = expected_count_problem(types, len(expected), at_least, at_most, "in this block")
        if problem:
            raise AssertionError(f"expected the app of {self!r} to raise {problem}.")

    def settle(self) -> None:
        """Wait (at most 1 s) until the server has finished the step it was in when a client got its answer.

        An app error and its log lines are recorded just after the response is sent;
        after `settle()` they are in `errors` and `log` (reading `errors` settles by
        itself). Blocks; returns at once when the server is not running or when called
        from the server's own event loop.
        """
        self._core.settle()

    @property
    def pid(self) -> int | None:
        """The id of the process serving the app: the test's own in thread and loop mode, the child's in
        process mode (the current or last one; None before the first start)."""
        if self.mode != "process":
            return os.getpid()
        run = self._core.last_run
        return run.pid if isinstance(run, ProcessRun) else None

    @property
    def output(self) -> str:
        """Process mode: the child's stdout and stderr since the last start (merged, the last 2000 lines).

        Raises `ServerStateError` in thread and loop mode, where the app writes to the
        test process's own streams (which pytest captures).
        """
        return self._process_run("output").output

    @property
    def returncode(self) -> int | None:
        """Process mode: the exit code of the last child once it has ended (negative: killed by that signal).

        None while it runs or before the first start; raises `ServerStateError` in
        thread and loop mode.
        """
        return self._process_run("returncode").returncode

    def _process_run(self, name: str) -> ProcessRun | _NoRun:
        if self.mode != "process":
            raise ServerStateError(
                f"{self!r} has no {name}: the app runs in the test's own process in mode={self.mode!r}."
            )
        run = self._core.last_run
        return run if isinstance(run, ProcessRun) else _NoRun()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        pid = f" pid={self.pid}" if self.mode == "process" else ""
        where = f"{self._core.settings.app_name} {self._core.where()}{pid}"
        return f"<{type(self).__name__} mode={self.mode} app={where} {state}>"


class _NoRun:
    """What `output` and `returncode` read before the first start."""

    output = ""
    returncode = None


@contextlib.contextmanager
def errors_noted_on(body_error: BaseException | None) -> Iterator[None]:
    """Around the stop that ends a ``with`` block: if the block failed, its failure stays the error,
    and the app's errors (`ServerExceptionsError`) are added to it as a note."""
    if body_error is None:
        yield
        return
    try:
        yield
    except ServerExceptionsError as server_error:
        body_error.add_note(str(server_error))

"""The options of every face, typed once: `ServerOptions`, `AsyncServerOptions` and `UvicornOptions`.

A face takes them as ``**options: Unpack[ServerOptions]``, so a type checker and an IDE
know every option, and `spelled_out` makes `inspect.signature` list each one with its
default. The defaults and the checks are `settings`' alone.
"""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar

from uvicorn_testserver._core.settings import DEFAULTS, FACE_ONLY, LogLevel, StopSignal

if TYPE_CHECKING:
    import asyncio
    import ssl as ssl_module

__all__ = ["AsyncServerOptions", "ServerOptions", "UvicornOptions", "spelled_out"]


class UvicornOptions(TypedDict, total=False):
    """The `uvicorn.Config` options a test server passes through to uvicorn, as uvicorn types them.

    Those a test server cannot honour (``workers``, ``reload``, ``uds``, ``fd``,
    ``log_config``, ...) are refused with the reason. A newer uvicorn's options work too:
    every name `uvicorn.Config` takes is accepted at run time.
    """

    loop: str
    http: str | type[asyncio.Protocol]
    ws: str | type[asyncio.Protocol]
    ws_max_size: int
    ws_max_queue: int
    ws_ping_interval: float | None
    ws_ping_timeout: float | None
    ws_per_message_deflate: bool
    env_file: str | os.PathLike[str] | None
    access_log: bool
    use_colors: bool | None
    interface: Literal["auto", "asgi3", "asgi2", "wsgi"]
    proxy_headers: bool
    server_header: bool
    date_header: bool
    forwarded_allow_ips: list[str] | str | None
    root_path: str
    limit_concurrency: int | None
    limit_max_requests: int | None
    limit_max_requests_jitter: int
    backlog: int
    timeout_keep_alive: int
    timeout_notify: int
    timeout_worker_healthcheck: int
    callback_notify: Callable[..., Awaitable[None]] | None
    ssl_keyfile: str | os.PathLike[str] | None
    ssl_certfile: str | os.PathLike[str] | None
    ssl_keyfile_password: str | None
    ssl_version: int
    ssl_cert_reqs: int
    ssl_ca_certs: str | os.PathLike[str] | None
    ssl_ciphers: str | None
    ssl_context_factory: Callable[..., ssl_module.SSLContext] | None
    headers: list[tuple[str, str]] | None
    factory: bool
    h11_max_incomplete_event_size: int | None
    reset_contextvars: bool


class _HarnessOptions(UvicornOptions, total=False):
    ssl: bool
    """Serve HTTPS and WSS with a throw-away certificate authority (``trustme``); see `ca_path`."""
    http2: bool
    """Serve HTTP/2 as well as HTTP/1.1 (uvicorn's zttp protocol; the extra ``http2``): over TLS by ALPN, in
    cleartext with prior knowledge (h2c)."""
    health_path: str | None
    """A path that must answer 2xx before the start returns, such as ``"/health"``."""
    startup_timeout: float
    """Seconds the start may take (a deadline for failures: a passing start never waits it out)."""
    shutdown_timeout: float
    """Seconds requests in flight may take to finish at stop before they are cut."""
    raise_server_exceptions: bool
    """Raise the app's unhandled exceptions from the stop that ends the run (`ServerExceptionsError`)."""
    log_level: LogLevel
    """The level of the server's log: what `log` captures and what reaches the process's logging."""
    propagate_logs: bool
    """Let the server's log reach the process's logging (pytest's ``caplog``) as well as `log`."""
    stop_signal: StopSignal | signal.Signals
    """The signal whose handling `stop()` goes through: ``"SIGTERM"`` (a process manager) or ``"SIGINT"``."""
    env: Mapping[str, str] | None
    """``mode="process"``: environment variables added to the child's."""
    cwd: str | os.PathLike[str] | None
    """``mode="process"``: the child's working directory."""


class ServerOptions(_HarnessOptions, total=False):
    """The keyword options of `UvicornTestServer` and `ProcessServer`, typed: the harness's own, with their
    defaults in `DEFAULTS`, and `uvicorn.Config`'s (`UvicornOptions`)."""

    lifespan: Literal["auto", "on", "off"]
    """uvicorn's lifespan option: ``"auto"`` (its default), ``"on"`` or ``"off"``."""


class AsyncServerOptions(_HarnessOptions, total=False):
    """The keyword options of `AsyncTestServer` and `create_test_server` besides ``app``, ``mode``, ``lifespan``
    and ``client_timeout``: `ServerOptions`' and where the server listens."""

    host: str
    """The interface to bind: loopback unless told otherwise."""
    port: int
    """The port to bind; 0 (the default) picks a free one, race-free."""


_Face = TypeVar("_Face", bound=Callable[..., Any])


def spelled_out(face: _Face) -> _Face:
    """Show a face's ``**options`` as the options they are: `inspect.signature` (and ``help()``) lists each
    with its default, the harness's from `DEFAULTS`, uvicorn's from `uvicorn.Config`."""
    signature = inspect.signature(face)
    config = inspect.signature(_uvicorn_config()).parameters
    own = {
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }
    keywords = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=DEFAULTS.get(name, config[name].default if name in config else None),
            annotation=annotation,
        )
        for name, annotation in _spelled_options().items()
        if name not in own and (name in config or name in DEFAULTS or name in FACE_ONLY)
    ]
    parameters = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    face.__signature__ = signature.replace(parameters=[*parameters, *keywords])  # type: ignore[attr-defined]
    return face


def _spelled_options() -> dict[str, str]:
    """Every option's name and type, the harness's first, as the API reference lists them."""
    typed = {**AsyncServerOptions.__annotations__, **ServerOptions.__annotations__}
    order = [*DEFAULTS, "env", "cwd", "lifespan", *UvicornOptions.__annotations__]
    return {name: getattr(typed[name], "__forward_arg__", typed[name]) for name in order}


def _uvicorn_config() -> Callable[..., Any]:
    import uvicorn

    return uvicorn.Config.__init__

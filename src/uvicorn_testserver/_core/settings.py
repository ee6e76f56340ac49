"""`ServerSettings`: one validated description of a server, built once, at construction.

Every face (`UvicornTestServer`, `AsyncTestServer`, the pytest plugin) builds its
settings here, so the defaults are one set and every option is checked the same way:
a wrong name or type raises `TypeError`, a wrong value `ValueError`, each naming the
option and what it accepts, before anything starts. The app is prepared as it will be
served (a WSGI app wrapped for a2wsgi, a throw-away CA made for ``ssl=True``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import logging
import math
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from uvicorn_testserver._core.tls import ServerTLS

# uvicorn, ssl (for ssl=True) and a2wsgi (for WSGI apps) load when a server is built, not on import:
# the pytest plugin reads its options with this module, and must cost nothing to a suite that never uses it.

__all__ = [
    "DEFAULTS",
    "FACE_ONLY",
    "LEVELS",
    "MODES",
    "STOP_SIGNALS",
    "AppType",
    "LogLevel",
    "Mode",
    "ServerSettings",
    "ServerURL",
    "StopSignal",
    "check_options",
    "check_seconds",
    "check_uvicorn_options",
    "connect_host",
    "describe_app",
    "server_url",
]

AppType = Callable[..., Any] | str

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
"""The `log_level` names a server accepts, most to least severe, as uvicorn spells them."""
LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}

StopSignal = Literal["SIGTERM", "SIGINT"]
"""The signal whose handling `stop()` goes through, as a process manager (SIGTERM) or Ctrl-C (SIGINT) stops uvicorn."""
STOP_SIGNALS: tuple[str, ...] = get_args(StopSignal)

Mode = Literal["thread", "loop", "process"]
"""Where uvicorn runs: a daemon thread with its own loop, the caller's running loop, or a child process."""
MODES: tuple[str, ...] = get_args(Mode)

#: The defaults of every face. startup_timeout is a deadline for failures only (a passing start never
#: waits it out), long enough for a child interpreter to import the app on a busy CI machine.
DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "ssl": False,
    "http2": False,
    "health_path": None,
    "startup_timeout": 30.0,
    "shutdown_timeout": 5.0,
    "raise_server_exceptions": True,
    "log_level": "warning",
    "propagate_logs": True,
    "stop_signal": "SIGTERM",
}

#: uvicorn.Config options that make no sense for a test server, and why.
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
    "host": "pass host as an argument of the server",
    "port": "pass port as an argument of the server",
    "log_level": "pass log_level as an argument of the server",
}

#: The options of a face that are neither settings with a default nor uvicorn's.
FACE_ONLY = frozenset({"mode", "env", "cwd"})


@functools.cache
def _config_parameters() -> tuple[frozenset[str], str]:
    import uvicorn

    return frozenset(inspect.signature(uvicorn.Config.__init__).parameters) - {"self"}, uvicorn.__version__


def check_uvicorn_options(options: Mapping[str, Any]) -> None:
    """Raise `TypeError` for an option uvicorn does not know or the harness cannot honour."""
    for name in options:
        if name in REJECTED_OPTIONS:
            raise TypeError(f"uvicorn-testserver does not accept {name!r}: {REJECTED_OPTIONS[name]}.")
        parameters, version = _config_parameters()
        if name not in parameters:
            own = sorted({*DEFAULTS, *FACE_ONLY})
            uvicorns = sorted(parameters - REJECTED_OPTIONS.keys())
            close = difflib.get_close_matches(name, [*own, *uvicorns], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"{name!r} is not an option of the server nor of uvicorn.Config {version}.{hint} The server's own "
                f"options: {', '.join(own)}; uvicorn.Config's: {', '.join(uvicorns)}."
            )


def describe_app(app: AppType) -> str:
    """The app as error messages name it: the import string, or ``module.QualName``."""
    if isinstance(app, str):
        return repr(app)
    name = getattr(app, "__qualname__", None) or type(app).__qualname__
    return f"{getattr(app, '__module__', '?')}.{name}"


class ServerURL(str):
    """A server's address, ``http://127.0.0.1:8000``: a string that also builds URLs.

    ``server.url("/path")`` gives the absolute URL of a path (a leading ``/`` is added
    if missing), and, being a string, ``f"{server.url}/path"`` and
    ``requests.get(server.url)`` work too, as with the hand-written test servers whose
    ``url`` is a string.
    """

    __slots__ = ()

    def __call__(self, path: str = "/") -> str:
        return str(self) + (path if path.startswith("/") else "/" + path)


def server_url(scheme: str, host: str, port: int) -> ServerURL:
    """The address a client uses for a server bound to `host`:`port`, with `scheme` (``ws``/``wss`` too)."""
    return ServerURL(f"{scheme}://{connect_host(host)}:{port}")


def connect_host(host: str) -> str:
    """The host a client connects to for a server bound to `host` (a wildcard becomes loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


@dataclass(eq=False, slots=True)  # not frozen: a frozen init costs more than the rest of a construction
class ServerSettings:
    """A server as it will be served, checked. Build it with `ServerSettings.build`."""

    app: AppType
    mode: Mode
    host: str
    port: int
    tls: ServerTLS | None
    http2: bool
    health_path: str | None
    startup_timeout: float
    shutdown_timeout: float
    raise_server_exceptions: bool
    log_level: LogLevel
    propagate_logs: bool
    stop_signal: StopSignal
    uvicorn_options: dict[str, Any]
    served_app: Any
    served_options: dict[str, Any]
    env: dict[str, str] | None
    cwd: str | os.PathLike[str] | None

    @classmethod
    def build(cls, app: AppType, *, mode: Mode = "thread", options: Mapping[str, Any]) -> ServerSettings:
        """Check every option; raise `TypeError` / `ValueError` naming the option and what it accepts, and
        `ImportError` naming what to install when an option needs a package that is missing (``ssl=True``,
        ``http2=True``).

        `options` are a face's keyword options as it was given them (`ServerOptions`, with
        ``host`` and ``port``): the harness's own, then ``env`` and ``cwd``, then uvicorn's.
        """
        if not isinstance(app, str) and not callable(app):
            raise TypeError(
                f"app must be an ASGI application or an import string like 'package.module:app', "
                f"not {type(app).__name__}."
            )
        values, uvicorn_options, env, cwd = _checked(mode, options)
        _check_app_for_mode(mode, app)
        ssl = values.pop("ssl")
        tls = None
        if ssl:
            from uvicorn_testserver._core.tls import server_tls

            tls = server_tls(ssl, uvicorn_options, values["host"])
        if mode == "process":  # the child imports the app and wraps a WSGI app itself
            served_app, served_options = app, uvicorn_options
        else:
            from uvicorn_testserver._core.wsgi import serve_app

            served_app, served_options = serve_app(app, uvicorn_options)
        if values["http2"]:  # uvicorn serves HTTP/2 (and HTTP/1.1 on the same port) through zttp only
            served_options = {**served_options, "http": "zttp", "http2": True}
        return cls(
            app=app,
            mode=mode,
            tls=tls,
            uvicorn_options=uvicorn_options,
            served_app=served_app,
            served_options=served_options,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            **values,
        )

    @property
    def app_name(self) -> str:
        """The app as messages name it."""
        return describe_app(self.app)

    @property
    def level(self) -> int:
        """`log_level` as a `logging` level number."""
        return LEVELS[self.log_level]

    @property
    def signal_number(self) -> int:
        """`stop_signal` as a number, for ``handle_exit`` and ``os.kill``."""
        return int(signal.Signals[self.stop_signal])

    @property
    def scheme(self) -> Literal["http", "https"]:
        """``https`` with ``ssl=True`` or the user's own certificate, else ``http``."""
        return "https" if self.tls is not None or self.uvicorn_options.get("ssl_certfile") else "http"


def check_options(options: Mapping[str, Any]) -> None:
    """Check options as the faces take them (``mode``, the harness's and uvicorn's, by name), before there is
    an app. Raises `TypeError` / `ValueError` as `ServerSettings.build` would; used by the pytest plugin to
    report ini and marker options as usage errors."""
    options = dict(options)
    _checked(options.pop("mode", "thread"), options)


def _checked(
    mode: str, options: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], Mapping[str, str] | None, str | os.PathLike[str] | None]:
    """`options` checked and split: the harness's values (defaults filled in), uvicorn's, ``env``, ``cwd``."""
    _one_of("mode", mode, MODES)
    values = {name: options.get(name, default) for name, default in DEFAULTS.items()}
    uvicorn_options = {name: value for name, value in options.items() if name not in DEFAULTS and name not in FACE_ONLY}
    env, cwd = options.get("env"), options.get("cwd")
    if isinstance(values["stop_signal"], signal.Signals):  # signal.SIGINT as well as "SIGINT"
        values["stop_signal"] = values["stop_signal"].name
    host, port, health_path = values["host"], values["port"], values["health_path"]
    _of_type("host", host, str, "a string such as '127.0.0.1'")
    _of_type("port", port, int, "an integer from 0 to 65535 (0 picks a free port)")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be from 0 to 65535 (0 picks a free port), not {port!r}.")
    _of_type("ssl", values["ssl"], bool, "True or False")
    _of_type("http2", values["http2"], bool, "True or False")
    if values["http2"]:
        _check_http2(uvicorn_options)
    if health_path is not None:
        _of_type("health_path", health_path, str, "a path such as '/health', or None")
        if not health_path.startswith("/"):
            raise ValueError(f"health_path must start with '/', like '/health', not {health_path!r}.")
    for name in ("startup_timeout", "shutdown_timeout"):
        check_seconds(name, values[name], zero=False)
    for name in ("raise_server_exceptions", "propagate_logs"):
        _of_type(name, values[name], bool, "True or False")
    _one_of("log_level", values["log_level"], tuple(LEVELS))
    _one_of("stop_signal", values["stop_signal"], STOP_SIGNALS)
    check_uvicorn_options(uvicorn_options)
    _check_mode(mode, uvicorn_options, env, cwd)
    return values, uvicorn_options, env, cwd


def _check_http2(options: Mapping[str, Any]) -> None:
    http = options.get("http", "zttp")
    if http != "zttp":
        raise ValueError(
            f"http2=True serves HTTP/2 and HTTP/1.1 through uvicorn's zttp protocol, so it cannot be combined with "
            f"http={http!r}. Drop http=, or drop http2=True to serve HTTP/1.1 with {http!r}."
        )
    from uvicorn_testserver._core.versions import http2_unavailable

    if reason := http2_unavailable():
        raise ImportError(reason, name="zttp")


def check_seconds(name: str, value: object, *, zero: bool = True) -> float:
    """`value` as seconds, checked as every timeout is: a real number, finite, not negative (nor zero, unless
    `zero`). Raises `TypeError` / `ValueError` naming `name`; per-call timeouts are checked here too."""
    accepted = "a number of seconds (0 or more)" if zero else "a positive number of seconds"
    _of_type(name, value, (int, float), accepted)
    seconds = float(value)  # type: ignore[arg-type]  # checked just above
    if not (math.isfinite(seconds) and (seconds >= 0 if zero else seconds > 0)):
        raise ValueError(f"{name} must be {accepted}, not {value!r}.")
    return seconds


def _of_type(name: str, value: object, kind: type | tuple[type, ...], accepted: str) -> None:
    if isinstance(value, bool) and kind is not bool:  # True is an int, but never a port or a timeout
        kind = ()
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {accepted}, not {type(value).__name__} {value!r}.")


def _one_of(name: str, value: object, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}, not {value!r}.")


def _check_mode(mode: str, options: dict[str, Any], env: object, cwd: object) -> None:
    """Refuse what the chosen mode cannot do, rather than serve something else."""
    if mode != "process":
        misplaced = [name for name, value in (("env", env), ("cwd", cwd)) if value is not None]
        if misplaced:
            raise TypeError(
                f"{' and '.join(misplaced)} apply to mode='process' only: mode={mode!r} shares the test's process."
            )
    if mode == "loop" and "loop" in options:
        raise TypeError("loop= picks the event loop of the server thread; with mode='loop' the server runs on yours.")
    if mode != "process":
        return
    if env is not None and not (
        isinstance(env, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise TypeError(f"env must be a mapping of str to str, not {env!r}.")
    for name, value in options.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"mode='process' sends uvicorn options to the child process as JSON, and {name}={value!r} "
                "is not JSON-serialisable; pass an import string or a plain value instead."
            ) from None


def _check_app_for_mode(mode: Mode, app: AppType) -> None:
    if mode == "process" and not isinstance(app, str):
        raise TypeError(
            f"mode='process' imports the app in a child process, so it needs an import string such as "
            f"'package.module:app', not the object {type(app).__name__} {app!r}. Move the app into an "
            "importable module, or use mode='thread' for app objects."
        )

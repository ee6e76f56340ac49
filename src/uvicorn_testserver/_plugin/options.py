"""The plugin's options: ini and command-line options, read and checked once, and the marker's."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

import pytest

from uvicorn_testserver._core.settings import DEFAULTS, LogLevel, check_options

__all__ = ["ServerScope"]

ServerScope = Literal["session", "package", "module", "function", "run"]
SCOPES: tuple[str, ...] = get_args(ServerScope)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
#: The harness options that have an ini option (uvicorn_<name>) of their own.
INI_TWINS = frozenset(
    {"host", "health_path", "startup_timeout", "shutdown_timeout", "log_level", "raise_server_exceptions"}
)
SECTION_TITLE = "uvicorn server log"
CUT_NOW = 0.001  # the shutdown_timeout of a stop that cuts at once: the requests have had their grace

NO_APP = (
    "uvicorn_server and fresh_uvicorn_server need the app under test, and none is configured. Set it in one of "
    'three ways: the ini option uvicorn_app = "package.module:app" (in pytest.ini, or [tool.pytest.ini_options] '
    "in pyproject.toml); the command-line option --uvicorn-app=package.module:app; or a uvicorn_app fixture "
    "(scope='session') in your conftest.py that returns the app."
)


EXPECT_KEYS = frozenset({"expect_errors", "expect_errors_at_least", "expect_errors_at_most"})
SHARED_RUN = "uvicorn-testserver-shared-run"
SHARED_TITLE = "uvicorn server log (the run's shared server; lines from every worker's requests)"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("uvicorn-testserver", "live uvicorn servers (uvicorn-testserver)")

    def add(name: str, help: str, *, ini_type: Literal["string", "bool", "linelist"] = "string", **cli: Any) -> None:
        group.addoption("--" + name.replace("_", "-"), dest=name, default=None, help=help + " Ini: " + name, **cli)
        parser.addini(name, help, type=ini_type, default=INI_DEFAULTS.get(name))

    add("uvicorn_app", "The app the uvicorn_app fixture serves, as an import string 'package.module:app'.")
    add(
        "uvicorn_server_scope",
        f"Scope of the uvicorn_server fixture: {', '.join(SCOPES)} (default session). run: one server for the "
        "whole run, shared by all pytest-xdist workers (in a process of its own; the app as an import string).",
        metavar="SCOPE",
    )
    add("uvicorn_host", "Host the plugin's servers bind (default 127.0.0.1).")
    add("uvicorn_health_path", "Path that must answer 2xx before a plugin server counts as started (default: none).")
    add(
        "uvicorn_startup_timeout",
        f"Seconds a plugin server may take to start (default {DEFAULTS['startup_timeout']:g}).",
        metavar="SECONDS",
    )
    add(
        "uvicorn_teardown_grace",
        "Seconds a test's own server gives requests the test left in flight before it cuts them at the test's "
        "teardown, with a warning naming them (default 0.5). A shared server only warns.",
        metavar="SECONDS",
    )
    add(
        "uvicorn_shutdown_timeout",
        f"Seconds a plugin server may take to stop (default {DEFAULTS['shutdown_timeout']:g}).",
        metavar="SECONDS",
    )
    add("uvicorn_log_level", f"Log level of the plugin's servers: {', '.join(LOG_LEVELS)} (default info).")
    add(
        "uvicorn_raise_server_exceptions",
        "Fail a test whose app raised an unhandled exception while serving it: true or false (default true).",
        ini_type="bool",
        metavar="BOOL",
    )
    add(
        "uvicorn_base_url",
        "Provide the base_url fixture (pytest-base-url's, which pytest-playwright and pytest-selenium use) from "
        "uvicorn_server, so page.goto('/') reaches the app: true or false (default false).",
        ini_type="bool",
        metavar="BOOL",
    )
    add(
        "uvicorn_options",
        "Extra options for the plugin's servers (uvicorn.Config's, or UvicornTestServer's such as ssl or http2), as "
        "key=value (the command-line option --uvicorn-options may be repeated). Values true, false, none and "
        "numbers are converted.",
        ini_type="linelist",
        action="append",
        metavar="KEY=VALUE",
    )


INI_DEFAULTS: dict[str, Any] = {
    "uvicorn_raise_server_exceptions": True,
    "uvicorn_base_url": False,
    "uvicorn_options": [],
}


class Settings:
    """The ini / command-line options, checked. (Plain classes here: the plugin loads in every pytest run.)"""

    def __init__(
        self, app: str | None, scope: ServerScope, server_options: dict[str, Any], teardown_grace: float, base_url: bool
    ) -> None:
        self.app = app
        self.scope = scope
        self.server_options = server_options
        self.teardown_grace = teardown_grace
        self.base_url = base_url


def read_settings(config: pytest.Config) -> Settings:
    """Read and check the options; raise `pytest.UsageError` naming the option and the valid values."""

    def get(name: str) -> Any:
        value = config.getoption(name)
        return config.getini(name) if value is None else value

    app = get("uvicorn_app") or None
    scope = get("uvicorn_server_scope") or "session"
    if scope not in SCOPES:
        raise pytest.UsageError(f"uvicorn_server_scope must be one of {', '.join(SCOPES)}, not {scope!r}.")
    log_level = get("uvicorn_log_level") or "info"
    if log_level not in LOG_LEVELS:
        raise pytest.UsageError(f"uvicorn_log_level must be one of {', '.join(LOG_LEVELS)}, not {log_level!r}.")
    options: dict[str, Any] = {"host": get("uvicorn_host") or "127.0.0.1", "log_level": log_level}
    if health_path := get("uvicorn_health_path"):
        options["health_path"] = health_path
    for name in ("startup_timeout", "shutdown_timeout"):
        default = DEFAULTS[name]
        options[name] = positive_seconds("uvicorn_" + name, get("uvicorn_" + name) or default)
    options["raise_server_exceptions"] = boolean(
        "uvicorn_raise_server_exceptions", get("uvicorn_raise_server_exceptions")
    )
    cli_options = config.getoption("uvicorn_options") or []
    for line in [*config.getini("uvicorn_options"), *cli_options]:
        key, value = key_value(line)
        if key == "port":
            raise pytest.UsageError(
                "uvicorn_options cannot set 'port': the plugin's servers take a free port each, so that tests "
                "(and pytest -n workers) never collide. Use uvicorn_server_factory(app, port=...) if you must."
            )
        if key in INI_TWINS:
            raise pytest.UsageError(
                f"uvicorn_options cannot set {key!r}: use the option uvicorn_{key} (--uvicorn-{key.replace('_', '-')})."
            )
        options[key] = value
    check_usage(options, "uvicorn_options")
    grace = positive_seconds("uvicorn_teardown_grace", get("uvicorn_teardown_grace") or 0.5)
    base_url = boolean("uvicorn_base_url", get("uvicorn_base_url"))
    if base_url and scope not in ("session", "run"):
        raise pytest.UsageError(
            f"uvicorn_base_url needs the session's uvicorn_server (base_url is a session fixture), but "
            f"uvicorn_server_scope is {scope!r}. Drop one of the two options."
        )
    return Settings(
        app=app, scope=cast(ServerScope, scope), server_options=options, teardown_grace=grace, base_url=base_url
    )


def positive_seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise pytest.UsageError(f"{name} must be a positive number of seconds, not {value!r}.")
    return seconds


def boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise pytest.UsageError(f"{name} must be true or false, not {value!r}.")


def key_value(line: str) -> tuple[str, Any]:
    key, sep, text = line.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise pytest.UsageError(f"uvicorn_options takes key=value lines such as http=h11, not {line!r}.")
    text = text.strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    if lowered == "none":
        return key, None
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return key, kind(text)
    return key, text


def check_usage(options: Mapping[str, Any], where: str) -> None:
    """Check server options the way the server would, as a `pytest.UsageError` that says where."""
    mode = options.get("mode", "thread")
    if mode not in ("thread", "process"):
        raise pytest.UsageError(
            f"{where}: mode must be 'thread' or 'process' (mode='loop' runs on your event loop: start an "
            f"AsyncTestServer in an async fixture for that), not {mode!r}."
        )
    try:
        check_options(options)
    except (TypeError, ValueError, ImportError) as exc:  # ImportError: a package an option needs (http2=True)
        raise pytest.UsageError(f"{where}: {exc}") from None


def marker_options(node: pytest.Item | pytest.Collector, base: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by the ``uvicorn`` markers on `node` and its parents, the closest last (it wins)."""
    options = dict(base)
    for marker in reversed(list(node.iter_markers("uvicorn"))):
        if marker.args:
            raise pytest.UsageError(
                f"@pytest.mark.uvicorn takes keyword arguments only (on {node.nodeid}), "
                f"e.g. @pytest.mark.uvicorn(health_path='/health'); got {marker.args!r}."
            )
        if "app" in marker.kwargs:
            raise pytest.UsageError(
                f"@pytest.mark.uvicorn cannot set the app (on {node.nodeid}): override the uvicorn_app fixture, "
                "or use uvicorn_server_factory(app)."
            )
        options.update({key: value for key, value in marker.kwargs.items() if key not in EXPECT_KEYS})
    if options != base:
        check_usage(options, f"@pytest.mark.uvicorn on {node.nodeid or 'the session'}")
    return options

"""The pytest plugin, registered through the ``pytest11`` entry point: live uvicorn servers as fixtures.

Fixtures:

* ``uvicorn_app`` (session): the app under test, from the ini option ``uvicorn_app``, the
  command-line option ``--uvicorn-app``, or a conftest that overrides the fixture.
* ``uvicorn_server`` (session by default, see ``uvicorn_server_scope``): one shared live server
  of ``uvicorn_app``.
* ``fresh_uvicorn_server`` (function): a live server of ``uvicorn_app`` for one test.
* ``uvicorn_server_factory`` (function): ``uvicorn_server_factory(app, **options)`` starts any
  number of servers and stops them all when the test ends.
* ``uvicorn_live_server`` (function, with pytest-django): the Django project's ASGI
  application, live, with the test's database (``transactional_db``).
* ``base_url`` (session, with the ini option ``uvicorn_base_url = true``): the address of
  ``uvicorn_server``, for pytest-playwright and pytest-base-url.

Options come from ini / command line, then ``@pytest.mark.uvicorn(...)`` markers (the
closest wins), then the factory's keyword arguments.

The plugin watches only the servers its fixtures start. For each test it remembers
where each server's log stood and how many app errors it had reported. A failing test
gets a "uvicorn server log" report section per server it used; app errors raised
during a test that otherwise passed fail it at teardown. Plugin state lives in
``config.stash`` and ``item.stash``.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Generator, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, requires, version
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, get_args

import pytest

from uvicorn_testserver._errors import (
    InFlightWarning,
    ServerExceptionsError,
    ServerStartupError,
    ServerStateError,
    error_is_of,
    expected_count,
    expected_count_problem,
    format_exception,
)
from uvicorn_testserver._logs import format_records
from uvicorn_testserver._settings import DEFAULTS, AppType, LogLevel, check_options, describe_app

if TYPE_CHECKING:
    from uvicorn_testserver._managed import ManagedServer
    from uvicorn_testserver._server import UvicornTestServer
    from uvicorn_testserver._shared import SharedRun, SharedServer

__all__ = ["ServerScope", "UvicornServerFactory"]

ServerScope = Literal["session", "package", "module", "function", "run"]
_SCOPES: tuple[str, ...] = get_args(ServerScope)
_LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)
#: The harness options that have an ini option (uvicorn_<name>) of their own.
_INI_TWINS = frozenset(
    {"host", "health_path", "startup_timeout", "shutdown_timeout", "log_level", "raise_server_exceptions"}
)
_SECTION_TITLE = "uvicorn server log"
_CUT_NOW = 0.001  # the shutdown_timeout of a stop that cuts at once: the requests have had their grace

_NO_APP = (
    "uvicorn_server and fresh_uvicorn_server need the app under test, and none is configured. Set it in one of "
    'three ways: the ini option uvicorn_app = "package.module:app" (in pytest.ini, or [tool.pytest.ini_options] '
    "in pyproject.toml); the command-line option --uvicorn-app=package.module:app; or a uvicorn_app fixture "
    "(scope='session') in your conftest.py that returns the app."
)


class UvicornServerFactory(Protocol):
    """The ``uvicorn_server_factory`` fixture: ``factory(app, **options)`` returns a started server.

    `options` are those of `UvicornTestServer` and override the ini / marker options.
    Blocks until the server is ready; raises what `UvicornTestServer.start` raises. Every
    server it made is stopped when the test ends.
    """

    def __call__(self, app: AppType, /, **options: Any) -> UvicornTestServer: ...


# -- options ----------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("uvicorn-testserver", "live uvicorn servers (uvicorn-testserver)")

    def add(name: str, help: str, *, ini_type: Literal["string", "bool", "linelist"] = "string", **cli: Any) -> None:
        group.addoption("--" + name.replace("_", "-"), dest=name, default=None, help=help + " Ini: " + name, **cli)
        parser.addini(name, help, type=ini_type, default=_INI_DEFAULTS.get(name))

    add("uvicorn_app", "The app the uvicorn_app fixture serves, as an import string 'package.module:app'.")
    add(
        "uvicorn_server_scope",
        f"Scope of the uvicorn_server fixture: {', '.join(_SCOPES)} (default session). run: one server for the "
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
    add("uvicorn_log_level", f"Log level of the plugin's servers: {', '.join(_LOG_LEVELS)} (default info).")
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
        "Extra options for the plugin's servers (uvicorn.Config's, or UvicornTestServer's such as ssl), as "
        "key=value (the command-line option --uvicorn-options may be repeated). Values true, false, none and "
        "numbers are converted.",
        ini_type="linelist",
        action="append",
        metavar="KEY=VALUE",
    )


_INI_DEFAULTS: dict[str, Any] = {
    "uvicorn_raise_server_exceptions": True,
    "uvicorn_base_url": False,
    "uvicorn_options": [],
}


class _Settings:
    """The ini / command-line options, checked. (Plain classes here: the plugin loads in every pytest run.)"""

    def __init__(
        self, app: str | None, scope: ServerScope, server_options: dict[str, Any], teardown_grace: float, base_url: bool
    ) -> None:
        self.app = app
        self.scope = scope
        self.server_options = server_options
        self.teardown_grace = teardown_grace
        self.base_url = base_url


def _read_settings(config: pytest.Config) -> _Settings:
    """Read and check the options; raise `pytest.UsageError` naming the option and the valid values."""

    def get(name: str) -> Any:
        value = config.getoption(name)
        return config.getini(name) if value is None else value

    app = get("uvicorn_app") or None
    scope = get("uvicorn_server_scope") or "session"
    if scope not in _SCOPES:
        raise pytest.UsageError(f"uvicorn_server_scope must be one of {', '.join(_SCOPES)}, not {scope!r}.")
    log_level = get("uvicorn_log_level") or "info"
    if log_level not in _LOG_LEVELS:
        raise pytest.UsageError(f"uvicorn_log_level must be one of {', '.join(_LOG_LEVELS)}, not {log_level!r}.")
    options: dict[str, Any] = {"host": get("uvicorn_host") or "127.0.0.1", "log_level": log_level}
    if health_path := get("uvicorn_health_path"):
        options["health_path"] = health_path
    for name in ("startup_timeout", "shutdown_timeout"):
        default = DEFAULTS[name]
        options[name] = _positive_seconds("uvicorn_" + name, get("uvicorn_" + name) or default)
    options["raise_server_exceptions"] = _boolean(
        "uvicorn_raise_server_exceptions", get("uvicorn_raise_server_exceptions")
    )
    cli_options = config.getoption("uvicorn_options") or []
    for line in [*config.getini("uvicorn_options"), *cli_options]:
        key, value = _key_value(line)
        if key == "port":
            raise pytest.UsageError(
                "uvicorn_options cannot set 'port': the plugin's servers take a free port each, so that tests "
                "(and pytest -n workers) never collide. Use uvicorn_server_factory(app, port=...) if you must."
            )
        if key in _INI_TWINS:
            raise pytest.UsageError(
                f"uvicorn_options cannot set {key!r}: use the option uvicorn_{key} (--uvicorn-{key.replace('_', '-')})."
            )
        options[key] = value
    _check(options, "uvicorn_options")
    grace = _positive_seconds("uvicorn_teardown_grace", get("uvicorn_teardown_grace") or 0.5)
    base_url = _boolean("uvicorn_base_url", get("uvicorn_base_url"))
    if base_url and scope not in ("session", "run"):
        raise pytest.UsageError(
            f"uvicorn_base_url needs the session's uvicorn_server (base_url is a session fixture), but "
            f"uvicorn_server_scope is {scope!r}. Drop one of the two options."
        )
    return _Settings(
        app=app, scope=cast(ServerScope, scope), server_options=options, teardown_grace=grace, base_url=base_url
    )


def _positive_seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise pytest.UsageError(f"{name} must be a positive number of seconds, not {value!r}.")
    return seconds


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise pytest.UsageError(f"{name} must be true or false, not {value!r}.")


def _key_value(line: str) -> tuple[str, Any]:
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


def _check(options: Mapping[str, Any], where: str) -> None:
    """Check server options the way the server would, as a `pytest.UsageError` that says where."""
    mode = options.get("mode", "thread")
    if mode not in ("thread", "process"):
        raise pytest.UsageError(
            f"{where}: mode must be 'thread' or 'process' (mode='loop' runs on your event loop: start an "
            f"AsyncTestServer in an async fixture for that), not {mode!r}."
        )
    try:
        check_options(options)
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"{where}: {exc}") from None


def _marker_options(node: pytest.Item | pytest.Collector, base: Mapping[str, Any]) -> dict[str, Any]:
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
        options.update({key: value for key, value in marker.kwargs.items() if key not in _EXPECT_KEYS})
    if options != base:
        _check(options, f"@pytest.mark.uvicorn on {node.nodeid or 'the session'}")
    return options


def _server_scope(fixture_name: str, config: pytest.Config) -> Literal["session", "package", "module", "function"]:
    scope = _state(config).settings.scope
    return "session" if scope == "run" else scope  # run: each worker's session holds the run's server


# -- the servers the plugin owns ---------------------------------------------------------------


class _Watch:
    """What the plugin knows about the servers around one test."""

    def __init__(self, log_marks: dict[ManagedServer, int]) -> None:
        self.log_marks = log_marks
        self.created: list[ManagedServer] = []
        self.errors: dict[ManagedServer, list[BaseException]] = {}
        self.failure: Exception | None = None  # what the teardown check raised
        self.raise_override: bool | None = None
        self.expected: _Expected | None = None  # from @pytest.mark.uvicorn(expect_errors=...)

    def used(self, item: pytest.Item) -> list[ManagedServer]:
        """Servers this test started, or received through a fixture (directly or via other fixtures)."""
        used = list(self.created)
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if _is_managed(value) and value not in used:
                used.append(value)
        return used

    def take_errors(self, server: ManagedServer) -> list[BaseException]:
        new = server.take_errors()
        self.errors.setdefault(server, []).extend(new)
        return new


class _State:
    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.live: dict[ManagedServer, None] = {}
        self.current: _Watch | None = None

    def start(self, app: AppType, options: dict[str, Any]) -> ManagedServer:
        server = _managed_server_class()(app, **options)
        if self.current is not None:
            self.current.created.append(server)
            self.current.log_marks[server] = 0
        try:
            server.start()  # on failure nothing is left running
        except ServerStartupError as exc:
            # The message, the log tail and the app's chained exception say what failed;
            # the harness's own frames would only push them off the screen.
            __tracebackhide__ = True
            raise exc.with_traceback(None) from exc.__cause__
        self.live[server] = None
        return server

    def stop(self, server: ManagedServer, test: str | None = None) -> None:
        """Stop `server`; at the end of `test` (a function-scoped server), warn about and cut what is in flight."""
        self.live.pop(server, None)
        watch = self.current
        if watch is not None and server not in watch.log_marks:
            # A shared server stopped at the end of a test that did not use it: its last errors are this test's.
            watch.log_marks[server] = server.log.mark()
            watch.created.append(server)
        grace = None
        if test is not None and server.is_running:
            try:
                # What ends within the grace is no leak: a handler still finishing after its response
                # (Django's request_finished) is done a moment later.
                server.wait_idle(self.settings.teardown_grace)
            except TimeoutError:
                _warn_in_flight(server, test, cut=True)
                grace = _CUT_NOW
        server.stop_quietly(grace)


def _warn_in_flight(server: ManagedServer, test: str, *, cut: bool) -> bool:
    """Warn, attached to `test`, if the app still handles requests it started; True if it does."""
    busy = server.in_flight()
    if busy:
        what = f"cutting {'it' if len(busy) == 1 else 'them'} after uvicorn_teardown_grace" if cut else "shared server"
        warnings.warn(
            InFlightWarning(
                f"{test} ended with {len(busy)} request(s) still in flight on {server.base_url} ({what}): "
                f"{'; '.join(busy)}. Close what the test opened, or wait for it with server.wait_idle()."
            ),
            stacklevel=1,
        )
    return bool(busy)


def _managed_server_class() -> type[ManagedServer]:
    """The server class, imported when a fixture first needs one: loading the plugin imports no uvicorn."""
    __tracebackhide__ = True
    try:
        from uvicorn_testserver._managed import ManagedServer
    except ImportError as exc:
        raise RuntimeError(_unsupported_uvicorn(exc)) from exc
    return ManagedServer


def _is_managed(value: object) -> bool:
    managed = sys.modules.get("uvicorn_testserver._managed")  # not imported: no fixture made a server
    return managed is not None and isinstance(value, managed.ManagedServer)


def _unsupported_uvicorn(exc: ImportError) -> str:
    try:
        installed = f"uvicorn {version('uvicorn')} is installed"
    except PackageNotFoundError:
        installed = "uvicorn is not installed"
    wanted = next((req for req in requires("uvicorn-testserver") or [] if req.startswith("uvicorn")), "uvicorn")
    return (
        f"uvicorn-testserver's fixtures need {wanted!r}, and {installed}: {exc}. Install a supported release, "
        f"e.g. pip install {wanted!r}."
    )


_STATE = pytest.StashKey[_State]()
_WATCH = pytest.StashKey[_Watch]()


def _state(config: pytest.Config) -> _State:
    state = config.stash.get(_STATE, None)
    if state is None:
        state = config.stash[_STATE] = _State(_read_settings(config))
    return state


# -- hooks ----------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "uvicorn(**options): options for the servers uvicorn-testserver's fixtures start for this test: host, "
        "health_path, startup_timeout, shutdown_timeout, log_level, raise_server_exceptions, or any uvicorn.Config "
        "option. @pytest.mark.uvicorn(expect_errors=SomeError) lets a test provoke that app error on purpose (it then "
        "fails if the error does not happen; expect_errors_at_least=0 allows it without requiring it, "
        "expect_errors_at_most=N caps it); raise_server_exceptions=False lets every app error through.",
    )

    state = _state(config)  # a bad option is a usage error now, not in the middle of the run
    if state.settings.base_url:
        # Registered after pytest-base-url and pytest-playwright, so this base_url is the one tests get;
        # a conftest's own base_url still wins.
        _provide(config, "uvicorn-testserver-base-url", base_url=_base_url)
    if config.pluginmanager.hasplugin("django"):  # pytest-django: the Django live server over ASGI
        _provide(config, "uvicorn-testserver-django", uvicorn_live_server=_uvicorn_live_server)
    if state.settings.scope == "run":
        from uvicorn_testserver._shared import SharedRun, run_directory

        config.pluginmanager.register(_SharedRunHooks(SharedRun(run_directory(config))), _SHARED_RUN)


def _provide(config: pytest.Config, name: str, **fixtures: Any) -> None:
    """Register `fixtures` now, after the plugins already loaded: where two define one name, they win."""
    provider = ModuleType(f"uvicorn_testserver.plugin:{name}")  # a module: pytest binds no instance to them
    for fixture_name, fixture in fixtures.items():
        setattr(provider, fixture_name, fixture)
    config.pluginmanager.register(provider, name)


def pytest_unconfigure(config: pytest.Config) -> None:
    hooks = config.pluginmanager.get_plugin(_SHARED_RUN)
    if isinstance(hooks, _SharedRunHooks):
        # The last pytest process of the run to leave stops the shared server (and waits for it).
        hooks.shared.leave(float(_state(config).settings.server_options["shutdown_timeout"]) + 10)


def pytest_report_header(config: pytest.Config) -> str:
    settings = _state(config).settings
    try:
        uvicorn = f"uvicorn {version('uvicorn')}"
    except PackageNotFoundError:
        uvicorn = "uvicorn not installed"
    line = f"uvicorn-testserver {version('uvicorn-testserver')}, {uvicorn}"
    if settings.app is not None:
        line += f", uvicorn_app: {settings.app}"
    return line + f", uvicorn_server scope: {settings.scope}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    __tracebackhide__ = True
    state = _state(item.config)
    watch = _Watch(log_marks={server: server.log.mark() for server in state.live})
    item.stash[_WATCH] = watch
    state.current = watch
    for marker in item.iter_markers("uvicorn"):  # the closest first
        if isinstance(marker.kwargs.get("raise_server_exceptions"), bool):
            watch.raise_override = marker.kwargs["raise_server_exceptions"]
            break
    for marker in item.iter_markers("uvicorn"):  # the closest first
        if "expect_errors" in marker.kwargs:
            watch.expected = _Expected.from_marker(item, marker.kwargs)
            break
    result = yield
    for server in watch.used(item):
        started_with = server.shared_options
        if started_with is not None:
            _check_shared(item, state, started_with, _marker_options(item, state.settings.server_options))
    return result


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # trylast: inside pytest's log capture, so what the server logs at the end of the test is in "Captured log call".
    __tracebackhide__ = True  # never shown in the failure of a test, least of all one that used no server
    try:
        return (yield)
    finally:
        watch = item.stash.get(_WATCH, None)
        for server in watch.used(item) if watch is not None else ():
            server.settle()


def _check_shared(item: pytest.Item, state: _State, started_with: dict[str, Any], wanted: dict[str, Any]) -> None:
    differ = sorted(
        key
        for key in started_with.keys() | wanted.keys()
        if key != "raise_server_exceptions" and started_with.get(key) != wanted.get(key)
    )
    if differ:
        asked = ", ".join(f"{key}={wanted.get(key)!r}" for key in differ)
        raise pytest.UsageError(
            f"{item.nodeid} asks for {asked} with @pytest.mark.uvicorn, but uvicorn_server is shared "
            f"(scope {state.settings.scope!r}) and was started without it. Use fresh_uvicorn_server or "
            "uvicorn_server_factory in this test, mark the whole module, or set uvicorn_server_scope = function."
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    __tracebackhide__ = True  # the failure is the app's: show its traceback, not this hook
    state = _state(item.config)
    try:
        result = yield
        _check_shared_idle(item, state)
    except BaseException as teardown_error:
        failure = _teardown_failure(item)
        if failure is not None:
            teardown_error.add_note(str(failure))
        raise
    finally:
        state.current = None
    failure = _teardown_failure(item)
    if failure is not None:
        item.stash[_WATCH].failure = failure
        raise failure
    return result


def _check_shared_idle(item: pytest.Item, state: _State) -> None:
    """Warn if a shared server still handles requests of the test once its fixtures (a browser page, a
    client) are torn down. A shared server is not cut: the warning names what the test left open."""
    watch = item.stash.get(_WATCH, None)
    if watch is None or state.settings.scope == "function":
        return
    for server in watch.used(item):
        if server.shared_options is not None and server.is_running:
            try:
                server.wait_idle(state.settings.teardown_grace)
            except TimeoutError:
                _warn_in_flight(server, item.nodeid, cut=False)


_EXPECT_KEYS = frozenset({"expect_errors", "expect_errors_at_least", "expect_errors_at_most"})


class _Expected:
    """What @pytest.mark.uvicorn(expect_errors=..., expect_errors_at_least=..., expect_errors_at_most=...) allows."""

    def __init__(self, types: tuple[type[BaseException], ...], at_least: int, at_most: int | None) -> None:
        self.types, self.at_least, self.at_most = types, at_least, at_most

    @classmethod
    def from_marker(cls, item: pytest.Item, kwargs: Mapping[str, Any]) -> _Expected:
        value = kwargs["expect_errors"]
        types = value if isinstance(value, tuple) else (value,)
        at_least, at_most = kwargs.get("expect_errors_at_least", 1), kwargs.get("expect_errors_at_most")
        try:
            expected_count(types, at_least, at_most)
        except (TypeError, ValueError) as exc:
            raise pytest.UsageError(
                f"@pytest.mark.uvicorn(expect_errors=...) on {item.nodeid}: {exc} It takes an exception class or "
                "a tuple of them, e.g. expect_errors=ZeroDivisionError, and optionally expect_errors_at_least=0 "
                "(allowed, not required) and expect_errors_at_most=N."
            ) from None
        return cls(types, at_least, at_most)

    def matches(self, error: BaseException) -> bool:
        return error_is_of(error, self.types)

    def failure(self, count: int) -> AssertionError | None:
        """The failure for a test in which the app raised `count` expected errors, if that is not allowed."""
        problem = expected_count_problem(self.types, count, self.at_least, self.at_most, "in this test")
        return (
            AssertionError(f"@pytest.mark.uvicorn(expect_errors=...): expected the app to raise {problem}.")
            if problem
            else None
        )


def _teardown_failure(item: pytest.Item) -> Exception | None:
    """The app errors of this test not reported yet, if the test is to fail for them."""
    watch = item.stash.get(_WATCH, None)
    if watch is None:
        return None
    failures: list[Exception] = []
    expected_count_seen = 0
    for server in watch.used(item):
        errors = watch.take_errors(server)
        if watch.expected is not None:
            matching = {id(error) for error in errors if watch.expected.matches(error)}
            expected_count_seen += len(matching)
            errors = [error for error in errors if id(error) not in matching]
        if server.shared_options is not None and watch.raise_override is not None:
            raise_them = watch.raise_override
        else:
            raise_them = server.raise_server_exceptions
        if errors and raise_them:
            failures.append(_exceptions_error(server, errors))
    shared = item.config.pluginmanager.get_plugin(_SHARED_RUN)
    if watch.expected is not None and not (isinstance(shared, _SharedRunHooks) and shared.uses(item)):
        count_failure = watch.expected.failure(expected_count_seen)
        if count_failure is not None:
            failures.append(count_failure)
    if not failures:
        return None
    for other in failures[1:]:
        failures[0].add_note(str(other))
    return failures[0]


def _exceptions_error(server: ManagedServer, errors: list[BaseException]) -> ServerExceptionsError:
    error = ServerExceptionsError(
        errors,
        served=[server.served_when_raised(error) for error in errors],
        shown=f"in the '{_SECTION_TITLE}' section of this report",
        url=server.base_url,
        host=server.host,
        port=server.port,
        app=describe_app(server.app),
    )
    hint = (
        "The test used this server while the app raised. For a test that provokes them on purpose: "
        "@pytest.mark.uvicorn(raise_server_exceptions=False). The server's log is in the 'uvicorn server log' section."
    )
    error.args = (f"{error.args[0]}\n{hint}",)  # shown as the report's text, where notes are not
    return error


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    watch = item.stash.get(_WATCH, None)
    if watch is None or not report.failed:
        return report
    if call.excinfo is not None and watch.failure is not None and call.excinfo.value is watch.failure:
        # The message says what failed (the tracebacks are in the section); this plugin's frames say nothing.
        report.longrepr = call.excinfo.getrepr(style="value")
    for server in watch.used(item):
        if call.when != "teardown":  # the teardown check has just taken them
            watch.take_errors(server)
        title, text = _section(server, watch.log_marks.get(server, 0), watch.errors.get(server, []))
        report.sections.append((title, text))
    return report


def _section(server: ManagedServer, log_mark: int, errors: list[BaseException]) -> tuple[str, str]:
    """A report section: what `server` logged during the test, then the app's errors with their tracebacks.

    Each traceback is shown once, after the log; a log line that reported one refers to it.
    """
    records = server.log.records_since(log_mark)
    lines = [format_records(records, shown=errors, reference="[{name}, traceback below]")] if records else []
    if not lines:
        lines.append("(the server logged nothing during this test)")
    if errors:
        count = len(errors)
        lines.append(f"The app raised {count} unhandled exception{'s' if count != 1 else ''} during this test:")
        lines.extend(format_exception(error) for error in errors)
    return f"{_SECTION_TITLE}: {describe_app(server.app)} on {_where(server)}", "\n".join(lines)


def _where(server: UvicornTestServer) -> str:
    try:
        return f"{server.host}:{server.port}"
    except ServerStateError:  # it never bound a port
        return server.host


# -- one server for the whole run (uvicorn_server_scope = run) ------------------------------------

_SHARED_RUN = "uvicorn-testserver-shared-run"
_SHARED_TITLE = "uvicorn server log (the run's shared server; lines from every worker's requests)"
_LOG_MARK = pytest.StashKey[int]()


class _SharedRunHooks:
    """The per-test side of the run's shared server: log window, error attribution, report section."""

    def __init__(self, shared: SharedRun) -> None:
        self.shared = shared

    def attach(self, app: AppType, options: dict[str, Any]) -> SharedServer:
        __tracebackhide__ = True
        if not isinstance(app, str):
            raise pytest.UsageError(
                "uvicorn_server_scope = run serves the app in a process of its own, so it needs the app as an "
                f"import string ('package.module:app'), not {describe_app(app)}: set the ini option uvicorn_app."
            )
        try:
            return self.shared.attach(app, options, float(options["startup_timeout"]))
        except ServerStartupError as exc:
            raise exc.with_traceback(None) from exc.__cause__

    def uses(self, item: pytest.Item) -> bool:
        return self.shared.server is not None and "uvicorn_server" in getattr(item, "fixturenames", ())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Iterator[None]:
        item.stash[_LOG_MARK] = self.shared.log_mark()
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        if not self.uses(item):
            return (yield)
        with self.shared.running(item.nodeid):
            try:
                return (yield)
            finally:
                # Still marked as running: what the app does for the test's last response is attributed to it.
                self.shared.settle()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        __tracebackhide__ = True
        result = yield
        if self.uses(item):
            failure = self._errors_of(item)
            if failure is not None:
                raise failure
        return result

    def _errors_of(self, item: pytest.Item) -> ServerExceptionsError | None:
        from uvicorn_testserver._process import ChildAppError

        theirs = [entry for entry in self.shared.new_errors() if item.nodeid in entry["running"]]
        errors, served = [], []
        for entry in theirs:
            error = ChildAppError(entry["type"], entry["message"], entry["traceback"])
            others = [test for test in entry["running"] if test != item.nodeid]
            if others:
                warnings.warn(
                    InFlightWarning(
                        f"The run's shared server raised {entry['type']}: {entry['message']} in {entry['serving']} "
                        f"while {item.nodeid} and {len(others)} test(s) on other workers were running "
                        f"({', '.join(others)}); it cannot tell which one caused it, so none of them fails for it."
                    ),
                    stacklevel=1,
                )
            else:
                errors.append(error)
                served.append(entry["serving"])
        watch = item.stash.get(_WATCH, None)
        expected = watch.expected if watch is not None else None
        if expected is not None:
            count_failure = expected.failure(sum(1 for error in errors if expected.matches(error)))
            if count_failure is not None:
                raise count_failure
            kept = [(e, s) for e, s in zip(errors, served, strict=True) if not expected.matches(e)]
            errors, served = [e for e, _ in kept], [s for _, s in kept]
        raise_them = _state(item.config).settings.server_options["raise_server_exceptions"]
        if not errors or not raise_them:
            return None
        server = self.shared.server
        assert server is not None
        return ServerExceptionsError(
            errors,
            served=served,
            shown=f"in the '{_SHARED_TITLE}' section of this report",
            url=server.base_url,
            host=server.host,
            port=server.port,
            app=describe_app(server.app),
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed and self.uses(item) and _LOG_MARK in item.stash:
            self.shared.settle()
            text = self.shared.log_since(item.stash[_LOG_MARK]) or "(the server logged nothing during this test)"
            server = self.shared.server
            assert server is not None
            report.sections.append((f"{_SHARED_TITLE}: {server.app} on {server.host}:{server.port}", text))
        return report


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def _uvicorn_live_server(request: pytest.FixtureRequest, transactional_db: None) -> Iterator[UvicornTestServer]:
    """``uvicorn_live_server`` (with pytest-django): the Django project's ASGI app, live, for this test.

    pytest-django's ``live_server`` over ASGI: ``ASGI_APPLICATION`` (Channels) or Django's
    own ASGI handler, static files served, the test's database shared with the server
    (``transactional_db``; an in-memory SQLite connection is the server's too).
    """
    __tracebackhide__ = True
    from uvicorn_testserver._django import asgi_application, reported_view_errors, shared_databases

    state = _state(request.config)
    options = {"lifespan": "off", **_marker_options(request.node, state.settings.server_options)}  # Django has none
    with shared_databases(options["host"]) as use_shared:
        server = state.start(asgi_application(use_shared), options)
        try:
            with reported_view_errors(server.note_app_error):
                yield server
        finally:
            state.stop(server, request.node.nodeid)


@pytest.fixture(scope="session")
def _base_url(uvicorn_server: UvicornTestServer) -> str:
    """``uvicorn_server.base_url``: where pytest-playwright's ``page.goto("/")`` goes."""
    return uvicorn_server.base_url


@pytest.fixture(scope="session")
def uvicorn_app(pytestconfig: pytest.Config) -> AppType:
    """The app under test, as an import string, from ini ``uvicorn_app`` or ``--uvicorn-app``.

    Override it in a conftest (with ``scope="session"``) to return the app object itself.
    Raises `pytest.UsageError` if neither is set.
    """
    app = _state(pytestconfig).settings.app
    if app is None:
        raise pytest.UsageError(_NO_APP)
    return app


@pytest.fixture(scope=_server_scope)
def uvicorn_server(request: pytest.FixtureRequest, uvicorn_app: AppType) -> Iterator[UvicornTestServer | SharedServer]:
    """One live server of ``uvicorn_app`` shared by the tests of its scope (session unless configured).

    Scope from the ini option ``uvicorn_server_scope``: run, session, package, module or
    function. With ``run``, one server serves the whole run, every pytest-xdist worker
    included: it runs in a process of its own and this fixture is a `SharedServer` (its
    address). pytest scopes a package fixture to the package that defines it, so with ``package`` a
    package gets its own server once its conftest.py has
    ``from uvicorn_testserver.plugin import uvicorn_server``. Markers on the scope's node (a
    module's ``pytestmark``, say) apply; a test-level marker that would need other server
    options is a usage error: use ``fresh_uvicorn_server`` for that.
    """
    __tracebackhide__ = True
    state = _state(request.config)
    options = _marker_options(request.node, state.settings.server_options)
    hooks = request.config.pluginmanager.get_plugin(_SHARED_RUN)
    if isinstance(hooks, _SharedRunHooks):
        yield hooks.attach(uvicorn_app, options)
        return
    server = state.start(uvicorn_app, options)
    server.shared_options = options
    yield server
    state.stop(server, request.node.nodeid if request.scope == "function" else None)


@pytest.fixture
def fresh_uvicorn_server(request: pytest.FixtureRequest, uvicorn_app: AppType) -> Iterator[UvicornTestServer]:
    """A live server of ``uvicorn_app`` for this test alone, stopped when it ends."""
    __tracebackhide__ = True
    state = _state(request.config)
    server = state.start(uvicorn_app, _marker_options(request.node, state.settings.server_options))
    yield server
    state.stop(server, request.node.nodeid)


@pytest.fixture
def uvicorn_server_factory(request: pytest.FixtureRequest) -> Iterator[UvicornServerFactory]:
    """``uvicorn_server_factory(app, **options)``: start servers of any app; all stop when the test ends.

    The servers stop in reverse order, each even if stopping another raised; the first
    such error is raised at teardown, the others added to it as notes.
    """
    state = _state(request.config)
    defaults = _marker_options(request.node, state.settings.server_options)
    made: list[ManagedServer] = []

    def factory(app: AppType, /, **options: Any) -> UvicornTestServer:
        server = state.start(app, {**defaults, **options})
        made.append(server)
        return server

    yield factory
    failures: list[BaseException] = []
    for server in reversed(made):
        try:
            state.stop(server, request.node.nodeid)
        except Exception as exc:  # noqa: BLE001 - every server must be stopped; the first error is raised below
            failures.append(exc)
    if failures:
        for other in failures[1:]:
            failures[0].add_note(f"Stopping another server also failed: {other!r}")
        raise failures[0]

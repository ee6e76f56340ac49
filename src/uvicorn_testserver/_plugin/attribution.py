"""What the plugin knows around each test: the servers it used, their log windows and app errors, and
the report: errors attributed to the test that caused them, its report section, its teardown failure."""

from __future__ import annotations

import os
import sys
import sysconfig
import traceback
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from uvicorn_testserver._core.errors import (
    InFlightWarning,
    ServerExceptionsError,
    ServerStartupError,
    ServerStateError,
    error_is_of,
    expected_count,
    expected_count_problem,
    format_exception,
)
from uvicorn_testserver._core.logs import ServerLog, format_records
from uvicorn_testserver._core.settings import AppType, describe_app
from uvicorn_testserver._plugin.options import CUT_NOW, Settings, marker_options, read_settings

if TYPE_CHECKING:
    from uvicorn_testserver._plugin.managed import ManagedServer


class Watched(Protocol):
    """A server the plugin watches test by test: one its fixtures started (`ManagedServer`), or the run's
    shared server (`SharedServer`). Every scope goes through the same attribution."""

    whole_run: bool  # the run's shared server: its requests in flight span the run's workers
    section_title: str  # the title of its report section
    shared_options: dict[str, Any] | None  # the options of a server tests share (uvicorn_server), else None

    @property
    def app(self) -> Any: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def base_url(self) -> str: ...
    @property
    def log(self) -> ServerLog: ...
    @property
    def is_running(self) -> bool: ...
    @property
    def raise_server_exceptions(self) -> bool: ...
    def take_errors(self, test: pytest.Item) -> list[BaseException]: ...
    def served_when_raised(self, error: BaseException) -> str: ...
    def settle(self) -> None: ...
    def wait_idle(self, timeout: float = ...) -> None: ...
    def in_flight(self) -> list[str]: ...


class Watch:
    """What the plugin knows about the servers around one test."""

    def __init__(self, log_marks: dict[Watched, int]) -> None:
        self.log_marks = log_marks
        self.created: list[Watched] = []
        self.errors: dict[Watched, list[BaseException]] = {}
        self.failure: Exception | None = None  # what the teardown check raised
        self.raise_override: bool | None = None
        self.expected: Expected | None = None  # from @pytest.mark.uvicorn(expect_errors=...)

    def used(self, item: pytest.Item) -> list[Watched]:
        """Servers this test started, or received through a fixture (directly or via other fixtures)."""
        used = list(self.created)
        funcargs = getattr(item, "funcargs", {})
        for value in funcargs.values():
            if is_watched(value) and value not in used:
                used.append(value)
        return used

    def take_errors(self, server: Watched, test: pytest.Item) -> list[BaseException]:
        new = server.take_errors(test)
        self.errors.setdefault(server, []).extend(new)
        return new


class State:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.live: dict[Watched, None] = {}
        self.current: Watch | None = None

    def start(self, app: AppType, options: dict[str, Any]) -> ManagedServer:
        server = managed_server_class()(app, **options)
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

    def stop(self, server: ManagedServer, test: pytest.Item | None = None) -> None:
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
                warn_in_flight(server, test, cut=True)
                grace = CUT_NOW
        server.stop_quietly(grace)


def warn_in_flight(server: Watched, test: pytest.Item, *, cut: bool) -> bool:
    """Warn, at `test`, if the app still handles requests it started; True if it does."""
    busy = server.in_flight()
    if busy:
        what = f"cutting {'it' if len(busy) == 1 else 'them'} after uvicorn_teardown_grace" if cut else "shared server"
        warn_at(
            test,
            InFlightWarning(
                f"{test.nodeid} ended with {len(busy)} request(s) still in flight on {server.base_url} ({what}): "
                f"{'; '.join(busy)}. Close what the test opened, or wait for it with server.wait_idle()."
            ),
        )
    return bool(busy)


def warn_at(test: pytest.Item, warning: Warning) -> None:
    """Issue `warning` as if raised on the line that defines `test`, so the report points at the test."""
    lineno = test.location[1]
    warnings.warn_explicit(warning, type(warning), filename=str(test.path), lineno=(lineno or 0) + 1)


def managed_server_class() -> type[ManagedServer]:
    """The server class, imported when a fixture first needs one: loading the plugin imports no uvicorn."""
    __tracebackhide__ = True
    try:
        from uvicorn_testserver._plugin.managed import ManagedServer
    except ImportError as exc:
        raise RuntimeError(f"uvicorn-testserver's fixtures cannot load: {exc}") from exc
    return ManagedServer


def is_watched(value: object) -> bool:
    """Whether `value` is a server a fixture of the plugin gave (not imported: no fixture made one)."""
    managed = sys.modules.get("uvicorn_testserver._plugin.managed")
    shared = sys.modules.get("uvicorn_testserver._plugin.shared_server")
    return (managed is not None and isinstance(value, managed.ManagedServer)) or (
        shared is not None and isinstance(value, shared.SharedServer)
    )


STATE = pytest.StashKey[State]()
WATCH = pytest.StashKey[Watch]()


def plugin_state(config: pytest.Config) -> State:
    state = config.stash.get(STATE, None)
    if state is None:
        state = config.stash[STATE] = State(read_settings(config))
    return state


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    __tracebackhide__ = True
    state = plugin_state(item.config)
    watch = Watch(log_marks={server: server.log.mark() for server in state.live})
    item.stash[WATCH] = watch
    state.current = watch
    for marker in item.iter_markers("uvicorn"):  # the closest first
        if isinstance(marker.kwargs.get("raise_server_exceptions"), bool):
            watch.raise_override = marker.kwargs["raise_server_exceptions"]
            break
    for marker in item.iter_markers("uvicorn"):  # the closest first
        if "expect_errors" in marker.kwargs:
            watch.expected = Expected.from_marker(item, marker.kwargs)
            break
    result = yield
    for server in watch.used(item):
        started_with = server.shared_options
        if started_with is not None:
            check_shared(item, state, started_with, marker_options(item, state.settings.server_options))
    return result


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # trylast: inside pytest's log capture, so what the server logs at the end of the test is in "Captured log call".
    __tracebackhide__ = True  # never shown in the failure of a test, least of all one that used no server
    try:
        return (yield)
    finally:
        watch = item.stash.get(WATCH, None)
        for server in watch.used(item) if watch is not None else ():
            server.settle()


def check_shared(item: pytest.Item, state: State, started_with: dict[str, Any], wanted: dict[str, Any]) -> None:
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
    state = plugin_state(item.config)
    try:
        result = yield
        check_shared_idle(item, state)
    except BaseException as teardown_error:
        failure = teardown_failure(item)
        if failure is not None:
            teardown_error.add_note(str(failure))
        raise
    finally:
        state.current = None
    failure = teardown_failure(item)
    if failure is not None:
        item.stash[WATCH].failure = failure
        raise failure
    return result


def check_shared_idle(item: pytest.Item, state: State) -> None:
    """Warn if a shared server still handles requests of the test once its fixtures (a browser page, a
    client) are torn down. A shared server is not cut: the warning names what the test left open."""
    watch = item.stash.get(WATCH, None)
    if watch is None or state.settings.scope == "function":
        return
    for server in watch.used(item):
        if server.shared_options is not None and not server.whole_run and server.is_running:
            try:
                server.wait_idle(state.settings.teardown_grace)
            except TimeoutError:
                warn_in_flight(server, item, cut=False)


class Expected:
    """What @pytest.mark.uvicorn(expect_errors=..., expect_errors_at_least=..., expect_errors_at_most=...) allows."""

    def __init__(self, types: tuple[type[BaseException], ...], at_least: int, at_most: int | None) -> None:
        self.types, self.at_least, self.at_most = types, at_least, at_most

    @classmethod
    def from_marker(cls, item: pytest.Item, kwargs: Mapping[str, Any]) -> Expected:
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


def teardown_failure(item: pytest.Item) -> Exception | None:
    """The app errors of this test not reported yet, if the test is to fail for them."""
    watch = item.stash.get(WATCH, None)
    if watch is None:
        return None
    failures: list[Exception] = []
    expected_count_seen = 0
    for server in watch.used(item):
        errors = watch.take_errors(server, item)
        if watch.expected is not None:
            matching = {id(error) for error in errors if watch.expected.matches(error)}
            expected_count_seen += len(matching)
            errors = [error for error in errors if id(error) not in matching]
        if server.shared_options is not None and watch.raise_override is not None:
            raise_them = watch.raise_override
        else:
            raise_them = server.raise_server_exceptions
        if errors and raise_them:
            failures.append(exceptions_error(server, errors))
    if watch.expected is not None:
        count_failure = watch.expected.failure(expected_count_seen)
        if count_failure is not None:
            failures.append(count_failure)
    if not failures:
        return None
    for other in failures[1:]:
        failures[0].add_note(str(other))
    return failures[0]


def exceptions_error(server: Watched, errors: Sequence[BaseException]) -> ServerExceptionsError:
    """The error that fails a test for the app errors of `server` during it; the tracebacks are in its section."""
    return ServerExceptionsError(
        errors,
        served=[server.served_when_raised(error) for error in errors],
        shown=f"in the '{server.section_title}' section below",
        expect="@pytest.mark.uvicorn(expect_errors={names_tuple})",
        url=server.base_url,
        host=server.host,
        port=server.port,
        app=describe_app(server.app),
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    watch = item.stash.get(WATCH, None)
    if watch is not None and call.when == "teardown":
        del item.stash[WATCH]  # its last use: the session keeps no test's servers, with their logs
    if watch is None or not report.failed or call.excinfo is None:
        return report
    error = call.excinfo.value
    if isinstance(error, ServerStartupError):
        # One screen: the harness's error alone (its message has the server's log tail), then the app's own
        # exception with only the app's frames. importlib's, uvicorn's and the harness's say nothing here.
        report.longrepr = call.excinfo.getrepr(style="value", chain=False)
        shorten_crash(report, f"ServerStartupError: {error.reason}")
        if error.__cause__ is not None:
            report.sections.append(("its cause (the app's own frames only)", app_frames(error.__cause__)))
        return report
    if watch.failure is not None and error is watch.failure:
        # The message says what failed (the tracebacks are in the section); this plugin's frames say nothing.
        report.longrepr = call.excinfo.getrepr(style="value")
    if isinstance(error, ServerExceptionsError):
        shorten_crash(report, str(error).partition("\n")[0])  # the app's exception first, in the -ra line too
    for server in watch.used(item):
        if call.when != "teardown":  # the teardown check has just taken them
            watch.take_errors(server, item)
        title, text = report_section(server, watch.log_marks.get(server, 0), watch.errors.get(server, []))
        report.sections.append((title, text))
    return report


def shorten_crash(report: pytest.TestReport, message: str) -> None:
    """Make `message` what the short test summary (``-ra``) says, instead of the harness's qualified class name,
    so the cause stays readable in 80 columns."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        crash.message = message


def app_frames(error: BaseException) -> str:
    """`error` with the frames of the app's own code only (not the standard library's, installed packages' or
    the harness's)."""
    library = ("site-packages", "<frozen ", f"{os.sep}uvicorn_testserver{os.sep}")
    stdlib = sysconfig.get_paths()["stdlib"]
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if not (f.filename.startswith(stdlib) or any(part in f.filename for part in library))]
    text = traceback.format_list(own) if own else []
    if text:
        text.insert(0, "Traceback (most recent call last):\n")
    return "".join([*text, *traceback.format_exception_only(error)]).rstrip()


def report_section(server: Watched, log_mark: int, errors: list[BaseException]) -> tuple[str, str]:
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
    return f"{server.section_title}: {describe_app(server.app)} on {server_where(server)}", "\n".join(lines)


def server_where(server: Watched) -> str:
    try:
        return f"{server.host}:{server.port}"
    except ServerStateError:  # it never bound a port
        return server.host

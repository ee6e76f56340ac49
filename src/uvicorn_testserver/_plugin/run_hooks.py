"""The per-test side of the run's shared server (``uvicorn_server_scope = run``): log window, error
attribution, report section."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from uvicorn_testserver._core.errors import (
    InFlightWarning,
    ServerExceptionsError,
    ServerStartupError,
)
from uvicorn_testserver._core.settings import AppType, describe_app
from uvicorn_testserver._plugin.attribution import WATCH, failing_exceptions_error, plugin_state, warn_at
from uvicorn_testserver._plugin.options import SHARED_TITLE

if TYPE_CHECKING:
    from uvicorn_testserver._plugin.run_scope import SharedRun, SharedServer


LOG_MARK = pytest.StashKey[int]()


class SharedRunHooks:
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
        item.stash[LOG_MARK] = self.shared.log_mark()
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
        from uvicorn_testserver._runners.process import ChildAppError

        theirs = [entry for entry in self.shared.new_errors() if item.nodeid in entry["running"]]
        errors, served = [], []
        for entry in theirs:
            error = ChildAppError(entry["type"], entry["message"], entry["traceback"])
            others = [test for test in entry["running"] if test != item.nodeid]
            if others:
                warn_at(
                    item,
                    InFlightWarning(
                        f"The run's shared server raised {entry['type']}: {entry['message']} in {entry['serving']} "
                        f"while {item.nodeid} and {len(others)} test(s) on other workers were running "
                        f"({', '.join(others)}); it cannot tell which one caused it, so none of them fails for it."
                    ),
                )
            else:
                errors.append(error)
                served.append(entry["serving"])
        watch = item.stash.get(WATCH, None)
        expected = watch.expected if watch is not None else None
        if expected is not None:
            count_failure = expected.failure(sum(1 for error in errors if expected.matches(error)))
            if count_failure is not None:
                raise count_failure
            kept = [(e, s) for e, s in zip(errors, served, strict=True) if not expected.matches(e)]
            errors, served = [e for e, _ in kept], [s for _, s in kept]
        raise_them = plugin_state(item.config).settings.server_options["raise_server_exceptions"]
        if not errors or not raise_them:
            return None
        server = self.shared.server
        assert server is not None
        return failing_exceptions_error(server, errors, served, SHARED_TITLE)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.failed and self.uses(item) and LOG_MARK in item.stash:
            self.shared.settle()
            text = self.shared.log_since(item.stash[LOG_MARK]) or "(the server logged nothing during this test)"
            server = self.shared.server
            assert server is not None
            report.sections.append((f"{SHARED_TITLE}: {server.app} on {server.host}:{server.port}", text))
        return report

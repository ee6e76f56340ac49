"""The run's shared server (``uvicorn_server_scope = run``) in this pytest process: attaching to it, and
marking the test that runs, so an app error is attributed to the test that caused it. Everything else (log
window, errors, report section) goes through the same attribution as every other scope."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from uvicorn_testserver._core.errors import ServerStartupError
from uvicorn_testserver._core.settings import AppType, describe_app
from uvicorn_testserver._plugin.attribution import plugin_state

if TYPE_CHECKING:
    from uvicorn_testserver._plugin.run_scope import SharedRun
    from uvicorn_testserver._plugin.shared_server import SharedServer


class SharedRunHooks:
    """This pytest process's part in the run's shared server."""

    def __init__(self, shared: SharedRun) -> None:
        self.shared = shared

    def attach(self, config: pytest.Config, app: AppType, options: dict[str, Any]) -> SharedServer:
        __tracebackhide__ = True
        if not isinstance(app, str):
            raise pytest.UsageError(
                "uvicorn_server_scope = run serves the app in a process of its own, so it needs the app as an "
                f"import string ('package.module:app'), not {describe_app(app)}: set the ini option uvicorn_app."
            )
        try:
            server = self.shared.attach(app, options, float(options["startup_timeout"]))
        except ServerStartupError as exc:
            raise exc.with_traceback(None) from exc.__cause__
        plugin_state(config).live[server] = None  # watched like any server a fixture gives
        return server

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        if self.shared.server is None or "uvicorn_server" not in getattr(item, "fixturenames", ()):
            return (yield)
        # Marked as running until the end of the call, and the settle at its end (attribution's) within it:
        # what the app does for the test's last response is attributed to it.
        with self.shared.running(item.nodeid):
            return (yield)

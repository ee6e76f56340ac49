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

from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

import pytest

from uvicorn_testserver._plugin.attribution import (
    plugin_state,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    pytest_runtest_teardown,
)
from uvicorn_testserver._plugin.fixtures import (
    UvicornServerFactory,
    fresh_uvicorn_server,
    uvicorn_app,
    uvicorn_server,
    uvicorn_server_factory,
)
from uvicorn_testserver._plugin.fixtures import base_url_fixture as _base_url
from uvicorn_testserver._plugin.fixtures import live_server_fixture as _uvicorn_live_server
from uvicorn_testserver._plugin.options import SHARED_RUN, ServerScope, pytest_addoption
from uvicorn_testserver._plugin.run_hooks import SharedRunHooks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "uvicorn(**options): options for the servers uvicorn-testserver's fixtures start for this test: host, "
        "health_path, startup_timeout, shutdown_timeout, log_level, raise_server_exceptions, or any uvicorn.Config "
        "option. @pytest.mark.uvicorn(expect_errors=SomeError) lets a test provoke that app error on purpose (it then "
        "fails if the error does not happen; expect_errors_at_least=0 allows it without requiring it, "
        "expect_errors_at_most=N caps it); raise_server_exceptions=False lets every app error through.",
    )

    state = plugin_state(config)  # a bad option is a usage error now, not in the middle of the run
    if state.settings.base_url:
        # Registered after pytest-base-url and pytest-playwright, so this base_url is the one tests get;
        # a conftest's own base_url still wins.
        provide(config, "uvicorn-testserver-base-url", base_url=_base_url)
    if config.pluginmanager.hasplugin("django"):  # pytest-django: the Django live server over ASGI
        provide(config, "uvicorn-testserver-django", uvicorn_live_server=_uvicorn_live_server)
    if state.settings.scope == "run":
        from uvicorn_testserver._plugin.run_scope import SharedRun, owns_the_run, run_directory

        shared = SharedRun(run_directory(config), owner=owns_the_run(config))
        config.pluginmanager.register(SharedRunHooks(shared), SHARED_RUN)


def provide(config: pytest.Config, name: str, **fixtures: Any) -> None:
    """Register `fixtures` now, after the plugins already loaded: where two define one name, they win."""
    provider = ModuleType(f"uvicorn_testserver.plugin:{name}")  # a module: pytest binds no instance to them
    for fixture_name, fixture in fixtures.items():
        setattr(provider, fixture_name, fixture)
    config.pluginmanager.register(provider, name)


def pytest_unconfigure(config: pytest.Config) -> None:
    hooks = config.pluginmanager.get_plugin(SHARED_RUN)
    if isinstance(hooks, SharedRunHooks):
        # The last pytest process of the run to leave stops the shared server (and waits for it).
        # A keeper's worst stop: the server's, as a process-mode one's (shutdown_timeout, then about 15 s more).
        hooks.shared.leave(float(plugin_state(config).settings.server_options["shutdown_timeout"]) + 20)


def pytest_report_header(config: pytest.Config) -> str:
    settings = plugin_state(config).settings
    try:
        uvicorn = f"uvicorn {version('uvicorn')}"
    except PackageNotFoundError:
        uvicorn = "uvicorn not installed"
    line = f"uvicorn-testserver {version('uvicorn-testserver')}, {uvicorn}"
    if settings.app is not None:
        line += f", uvicorn_app: {settings.app}"
    return line + f", uvicorn_server scope: {settings.scope}"


__all__ = [
    "ServerScope",
    "UvicornServerFactory",
    "fresh_uvicorn_server",
    "pytest_addoption",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_setup",
    "pytest_runtest_teardown",
    "pytest_unconfigure",
    "uvicorn_app",
    "uvicorn_server",
    "uvicorn_server_factory",
]

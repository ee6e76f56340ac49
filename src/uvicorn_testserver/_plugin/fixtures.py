"""The plugin's fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pytest

from uvicorn_testserver._core.settings import AppType
from uvicorn_testserver._plugin.attribution import plugin_state
from uvicorn_testserver._plugin.options import NO_APP, SHARED_RUN, marker_options
from uvicorn_testserver._plugin.run_hooks import SharedRunHooks

if TYPE_CHECKING:
    from uvicorn_testserver._faces.sync_server import UvicornTestServer
    from uvicorn_testserver._plugin.managed import ManagedServer
    from uvicorn_testserver._plugin.shared_server import SharedServer


class UvicornServerFactory(Protocol):
    """The ``uvicorn_server_factory`` fixture: ``factory(app, **options)`` returns a started server.

    `options` are those of `UvicornTestServer` and override the ini / marker options.
    Blocks until the server is ready; raises what `UvicornTestServer.start` raises. Every
    server it made is stopped when the test ends.
    """

    def __call__(self, app: AppType, /, **options: Any) -> UvicornTestServer: ...


def server_scope(fixture_name: str, config: pytest.Config) -> Literal["session", "package", "module", "function"]:
    scope = plugin_state(config).settings.scope
    return "session" if scope == "run" else scope  # run: each worker's session holds the run's server


@pytest.fixture
def live_server_fixture(request: pytest.FixtureRequest, transactional_db: None) -> Iterator[UvicornTestServer]:
    """``uvicorn_live_server`` (with pytest-django): the Django project's ASGI app, live, for this test.

    pytest-django's ``live_server`` over ASGI: ``ASGI_APPLICATION`` (Channels) or Django's
    own ASGI handler, static files served, the test's database shared with the server
    (``transactional_db``; an in-memory SQLite connection is the server's too).
    """
    __tracebackhide__ = True
    from uvicorn_testserver._plugin.django import asgi_application, reported_view_errors, shared_databases

    state = plugin_state(request.config)
    options = {"lifespan": "off", **marker_options(request.node, state.settings.server_options)}  # Django has none
    with shared_databases(options["host"]) as use_shared:
        server = state.start(asgi_application(use_shared), options)
        try:
            with reported_view_errors(server.note_app_error):
                yield server
        finally:
            state.stop(server, request.node)


@pytest.fixture(scope="session")
def base_url_fixture(uvicorn_server: UvicornTestServer) -> str:
    """``uvicorn_server.base_url``: where pytest-playwright's ``page.goto("/")`` goes."""
    return uvicorn_server.base_url


@pytest.fixture(scope="session")
def uvicorn_app(pytestconfig: pytest.Config) -> AppType:
    """The app under test, as an import string, from ini ``uvicorn_app`` or ``--uvicorn-app``.

    Override it in a conftest (with ``scope="session"``) to return the app object itself.
    Raises `pytest.UsageError` if neither is set.
    """
    app = plugin_state(pytestconfig).settings.app
    if app is None:
        raise pytest.UsageError(NO_APP)
    return app


@pytest.fixture(scope=server_scope)
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
    state = plugin_state(request.config)
    options = marker_options(request.node, state.settings.server_options)
    hooks = request.config.pluginmanager.get_plugin(SHARED_RUN)
    if isinstance(hooks, SharedRunHooks):
        yield hooks.attach(request.config, uvicorn_app, options)
        return
    server = state.start(uvicorn_app, options)
    server.shared_options = options
    yield server
    state.stop(server, request.node if request.scope == "function" else None)


@pytest.fixture
def fresh_uvicorn_server(request: pytest.FixtureRequest, uvicorn_app: AppType) -> Iterator[UvicornTestServer]:
    """A live server of ``uvicorn_app`` for this test alone, stopped when it ends."""
    __tracebackhide__ = True
    state = plugin_state(request.config)
    server = state.start(uvicorn_app, marker_options(request.node, state.settings.server_options))
    yield server
    state.stop(server, request.node)


@pytest.fixture
def uvicorn_server_factory(request: pytest.FixtureRequest) -> Iterator[UvicornServerFactory]:
    """``uvicorn_server_factory(app, **options)``: start servers of any app; all stop when the test ends.

    The servers stop in reverse order, each even if stopping another raised; the first
    such error is raised at teardown, the others added to it as notes.
    """
    state = plugin_state(request.config)
    defaults = marker_options(request.node, state.settings.server_options)
    made: list[ManagedServer] = []

    def factory(app: AppType, /, **options: Any) -> UvicornTestServer:
        server = state.start(app, {**defaults, **options})
        made.append(server)
        return server

    yield factory
    failures: list[BaseException] = []
    for server in reversed(made):
        try:
            state.stop(server, request.node)
        except Exception as exc:  # noqa: BLE001 - every server must be stopped; the first error is raised below
            failures.append(exc)
    if failures:
        for other in failures[1:]:
            failures[0].add_note(f"Stopping another server also failed: {other!r}")
        raise failures[0]

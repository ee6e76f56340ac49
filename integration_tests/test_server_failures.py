"""Failed starts: a typed error, raised fast, the app's exception chained, nothing left behind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

import apps
from apps import Baseline, hello_app, port_is_free
from uvicorn_testserver import ServerError, ServerStartupError, UvicornTestServer

#: A failure must come well before startup_timeout (30 s in these tests), not at it.
FAST = 5.0

StartFails = Callable[..., ServerStartupError]


@pytest.fixture
def start_fails() -> StartFails:
    """Start a server that must fail with a message matching `match`; return the `ServerStartupError`.

    Asserts first that the error says where and how long, came fast (well before a
    30 s startup_timeout unless the test passes a short one), was not uvicorn's
    `SystemExit`, and that threads, fds and the port are free again.
    """
    with UvicornTestServer(hello_app):  # warm imports and caches so the baseline is steady
        pass

    def start(app: Any, *, match: str, **options: Any) -> ServerStartupError:
        baseline = Baseline()
        timeout = options.setdefault("startup_timeout", 30)
        server = UvicornTestServer(app, **options)
        started_at = time.monotonic()
        try:
            with pytest.raises(ServerStartupError, match=match) as info:
                server.start()
        except SystemExit as exc:  # pragma: no cover - the failure this fixture guards against
            pytest.fail(f"start() let uvicorn's SystemExit({exc.code}) escape")
        error = info.value
        elapsed = time.monotonic() - started_at
        assert isinstance(error, ServerError)
        assert error.host == "127.0.0.1"
        assert error.port is not None
        assert error.port > 0
        assert error.elapsed is not None
        assert 0 <= error.elapsed <= elapsed < (FAST if timeout == 30 else timeout + FAST)
        assert isinstance(error.log_tail, str)
        assert not isinstance(error.__cause__, SystemExit), "uvicorn's exit is an implementation detail"
        assert not server.is_running
        baseline.assert_restored()
        assert port_is_free(error.port), f"port {error.port} is still taken after the failed start"
        return error

    return start


def test_start_raises_when_lifespan_startup_raises(start_fails: StartFails) -> None:
    error = start_fails(
        apps.lifespan_fails_app,
        match=r"failed to start: lifespan startup raised RuntimeError\('database unreachable'\)",
    )
    assert isinstance(error.__cause__, RuntimeError)
    assert str(error.__cause__) == "database unreachable"


def test_start_raises_with_the_message_of_lifespan_startup_failed(start_fails: StartFails) -> None:
    # The app's own message, in the first line and not only in the log tail.
    error = start_fails(
        apps.startup_failed_app,
        match=r"^[^\n]*lifespan startup failed: the cache warm-up found no redis at :6379",
    )
    assert error.__cause__ is None


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("no_such_module_anywhere:app", r"cannot import the app 'no_such_module_anywhere:app': Could not import"),
        (f"{apps.HERE}:no_such_app", r"Attribute \"no_such_app\" not found in module"),
        ("missing_colon", r"must be in format \"<module>:<attribute>\""),
    ],
    ids=["missing-module", "missing-attribute", "no-colon"],
)
def test_start_raises_on_a_bad_import_string(start_fails: StartFails, app: str, expected: str) -> None:
    start_fails(app, match=expected)


def test_start_chains_what_the_app_module_raised_at_import(start_fails: StartFails) -> None:
    app = apps.HERE.replace("apps", "broken_app_module") + ":app"
    error = start_fails(
        app, match=rf"importing the app '{app}' raised RuntimeError\('settings\.DATABASE_URL is not set"
    )
    assert isinstance(error.__cause__, RuntimeError)
    assert str(error.__cause__) == "settings.DATABASE_URL is not set"


def test_start_chains_what_an_app_factory_raised(start_fails: StartFails) -> None:
    def factory() -> Any:
        raise KeyError("SECRET_KEY")

    error = start_fails(
        factory, factory=True, match=r"failed to start: the app factory raised KeyError\('SECRET_KEY'\)"
    )
    assert isinstance(error.__cause__, KeyError)


def test_start_chains_the_type_error_of_a_factory_called_wrongly(start_fails: StartFails) -> None:
    def factory(settings: object) -> Any:
        raise AssertionError("never called with settings")  # pragma: no cover

    error = start_fails(factory, factory=True, match=r"failed to start: Error loading ASGI app factory: .*settings")
    assert isinstance(error.__cause__, TypeError)


def test_start_raises_when_the_websocket_implementation_cannot_import(start_fails: StartFails) -> None:
    ws = apps.HERE.replace("apps", "broken_ws_impl") + ":Protocol"
    error = start_fails(
        hello_app,
        ws=ws,
        match=rf"cannot load the WebSocket implementation ws='{ws}': ImportError\(\"cannot import name "
        r"'ServerProtocolFromTheFuture' from 'websockets'.*Install a websockets or wsproto version that matches "
        r"uvicorn [\d.]+, or pass ws='wsproto' or ws='none'",
    )
    assert isinstance(error.__cause__, ImportError)


def test_start_raises_on_an_unknown_http_implementation(start_fails: StartFails) -> None:
    start_fails(
        hello_app,
        http="nonexistent",
        match=r"cannot load the HTTP implementation http='nonexistent': ImportFromStringError\(.*Pass http='h11'",
    )


def test_start_raises_on_an_event_loop_that_cannot_import(start_fails: StartFails) -> None:
    start_fails(
        hello_app,
        loop="no_such_loop_module:new_event_loop",
        match=r"cannot create the event loop loop='no_such_loop_module:new_event_loop': "
        r"Error loading custom loop setup function\. Could not import module",
    )


def test_start_raises_when_lifespan_startup_never_completes(start_fails: StartFails) -> None:
    error = start_fails(
        apps.startup_hangs_app,
        startup_timeout=0.5,
        match=r"was not ready within startup_timeout=0\.5s: lifespan startup or loading the app did not finish",
    )
    assert error.elapsed is not None
    assert 0.5 <= error.elapsed < 0.5 + FAST


def test_a_start_that_times_out_before_the_loop_exists_does_not_wait_for_shutdown_timeout(
    start_fails: StartFails,
) -> None:
    start_fails(
        apps.startup_hangs_app,
        loop="apps:slow_event_loop",
        startup_timeout=0.2,
        shutdown_timeout=20,  # what the clean-up would wait if the cancel got lost
        match=r"was not ready within startup_timeout=0\.2s",
    )


def test_start_raises_when_lifespan_on_and_the_app_has_none(start_fails: StartFails) -> None:
    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']}")

    error = start_fails(http_only, lifespan="on", match=r"lifespan startup raised ValueError\('unsupported scope")
    assert isinstance(error.__cause__, ValueError)


def test_app_without_lifespan_support_starts_in_auto_mode() -> None:
    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with UvicornTestServer(http_only) as server:
        assert server.is_running
    assert server.errors == []


def test_a_non_asgi_object_raises_type_error_at_construction() -> None:
    with pytest.raises(TypeError, match=r"app must be an ASGI application or an import string .*, not int\."):
        UvicornTestServer(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"workers": 2}, r"does not accept 'workers': a test server runs in one thread"),
        ({"reload": True}, r"does not accept 'reload': the test process owns the code"),
        ({"log_config": {}}, r"does not accept 'log_config': the harness never reconfigures logging"),
        (
            {"no_such_option": 1},
            r"'no_such_option' is not an option of the server nor of uvicorn\.Config [\d.]+\. The ",
        ),
        (
            {"helth_path": "/health"},
            r"'helth_path' is not an option .* Did you mean 'health_path'\? The server's own opt",
        ),
    ],
    ids=["workers", "reload", "log_config", "unknown", "typo"],
)
def test_options_a_test_server_cannot_honour_raise_type_error(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(TypeError, match=expected):
        UvicornTestServer(hello_app, **options)


def test_failed_starts_never_surface_as_system_exit() -> None:
    """uvicorn calls sys.exit(3) on these paths; none of it may reach the test, not even as a cause."""
    failing: list[Any] = [apps.lifespan_fails_app, apps.startup_failed_app, "no_such_module_anywhere:app"]
    for app in failing:
        try:
            with pytest.raises(ServerStartupError) as info:
                UvicornTestServer(app).start()
        except SystemExit as exc:  # pragma: no cover
            pytest.fail(f"SystemExit({exc.code}) escaped from start() for {app!r}")
        chained = [info.value.__cause__, None if info.value.__suppress_context__ else info.value.__context__]
        assert not any(isinstance(exc, SystemExit) for exc in chained), app

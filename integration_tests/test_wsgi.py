"""WSGI apps served through a2wsgi: detected, or chosen with interface="wsgi"."""

from __future__ import annotations

import logging
import sys
from typing import Any

import httpx
import pytest
import requests
from django.core.wsgi import get_wsgi_application
from starlette.applications import Starlette

import apps_django
from apps import Baseline, hello_app
from apps_flask import app as flask_app
from apps_flask import create_app, hello_wsgi
from uvicorn_testserver import ServerExceptionsError, ServerStartupError, UvicornTestServer
from uvicorn_testserver._core.wsgi import is_wsgi_app

# -- serving ---------------------------------------------------------------------------------


def test_a_flask_app_object_is_detected_and_served() -> None:
    with UvicornTestServer(flask_app) as server:
        assert requests.get(server.url("/api/items"), params={"q": "x"}, timeout=30).json() == {
            "items": ["spam", "eggs"],
            "query": "x",
        }
        assert requests.post(server.url("/login"), data={"user": "ada"}, timeout=30).text == "welcome ada"
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            assert client.get("/stream").text == "line 0\nline 1\nline 2\n"
            assert client.get("/nowhere").status_code == 404


def test_an_import_string_is_served_with_interface_wsgi() -> None:
    with UvicornTestServer("apps_flask:app", interface="wsgi") as server:
        assert requests.get(server.url("/api/items"), timeout=30).json()["items"] == ["spam", "eggs"]


def test_a_factory_is_served_with_interface_wsgi() -> None:
    with UvicornTestServer("apps_flask:create_app", interface="wsgi", factory=True) as server:
        assert requests.post(server.url("/login"), data={"user": "bob"}, timeout=30).text == "welcome bob"


def test_a_bare_wsgi_function_is_detected() -> None:
    with UvicornTestServer(hello_wsgi) as server:
        assert requests.put(server.url("/x"), timeout=30).text == "plain WSGI saw PUT /x"


def test_djangos_wsgi_handler_is_detected() -> None:
    assert apps_django.urlpatterns  # the settings are configured
    with UvicornTestServer(get_wsgi_application()) as server:
        assert requests.get(server.url("/hello/"), params={"name": "wsgi"}, timeout=30).json()["hello"] == "wsgi"


def test_a_wsgi_app_serves_again_after_a_restart_and_leaves_no_worker_threads() -> None:
    server = UvicornTestServer(flask_app)
    with server:  # warm up imports and the first worker pool
        requests.get(server.url("/api/items"), timeout=30).raise_for_status()
    baseline = Baseline()
    with server:
        for _ in range(5):
            requests.get(server.url("/api/items"), timeout=30).raise_for_status()
    baseline.assert_restored(wait=2.0)


def test_a_wsgi_app_in_process_mode() -> None:
    with UvicornTestServer("apps_flask:app", mode="process", interface="wsgi") as server:
        assert requests.get(server.url("/api/items"), timeout=30).json()["items"] == ["spam", "eggs"]


# -- errors ----------------------------------------------------------------------------------


def test_flask_turns_a_view_exception_into_its_own_500_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="apps_flask"), UvicornTestServer(create_app()) as server:
        assert requests.get(server.url("/boom"), timeout=30).status_code == 500
    assert server.errors == [], "Flask handled the exception itself"
    [record] = [record for record in caplog.records if record.name == "apps_flask"]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


def test_a_propagated_flask_exception_is_recorded_and_raised_at_stop() -> None:
    server = UvicornTestServer(create_app(propagate_exceptions=True)).start()
    try:
        assert requests.get(server.url("/boom"), timeout=30).status_code == 500  # uvicorn's own 500
    finally:
        with pytest.raises(ServerExceptionsError, match=r"KeyError: 'flask view lost a key'"):
            server.stop()


def test_a_wsgi_import_string_that_does_not_import_fails_the_start() -> None:
    server = UvicornTestServer("apps_flask:missing", interface="wsgi")
    with pytest.raises(
        ServerStartupError, match=r"cannot import the WSGI app apps_flask:missing: Attribute \"missing\" not found"
    ):
        server.start()


def test_a_missing_a2wsgi_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "a2wsgi", None)  # what an environment without the package looks like
    with pytest.raises(
        ImportError, match=r"needs the a2wsgi package.*pip install a2wsgi \(the extra uvicorn-testserver\[wsgi\]\)"
    ):
        UvicornTestServer(flask_app)


# -- the detection rule ----------------------------------------------------------------------


async def asgi3_function(scope: Any, receive: Any, send: Any) -> None:
    raise NotImplementedError


class ASGI3Object:
    wsgi_app = staticmethod(hello_wsgi)  # even with a `wsgi_app`, an async __call__ means ASGI

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError


class ASGI2App:
    def __init__(self, scope: Any) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        raise NotImplementedError


def asgi2_function(scope: Any) -> Any:
    return asgi3_function


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (flask_app, True),
        (hello_wsgi, True),
        (get_wsgi_application(), True),
        (hello_app, False),
        (Starlette(), False),
        (asgi3_function, False),
        (ASGI3Object(), False),
        (ASGI2App, False),
        (asgi2_function, False),
        (print, False),
        ("apps_flask:app", False),
    ],
    ids=lambda value: value if isinstance(value, bool) else getattr(value, "__name__", type(value).__name__),
)
def test_wsgi_detection(app: Any, expected: bool) -> None:
    assert is_wsgi_app(app) is expected

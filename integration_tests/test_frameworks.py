"""The harness with apps beyond FastAPI: plain Starlette, Django's ASGI handler, Litestar.

Each app is started with `UvicornTestServer` and exercised with real clients over
loopback. How each framework reports a handler's exception differs, and the tests pin
it down: Starlette re-raises after its 500 (so the harness records it), while Django
and Litestar turn it into a 500 response themselves (the harness sees no error).
"""

from __future__ import annotations

import logging

import httpx
import pytest
import requests

import apps_django
import apps_litestar
import apps_starlette
from uvicorn_testserver import ServerExceptionsError, UvicornTestServer

# -- Starlette ------------------------------------------------------------------------------


def test_starlette_app_serves_lifespan_state_json_forms_and_websockets() -> None:
    with UvicornTestServer(apps_starlette.create_app()) as server:
        assert requests.get(server.url("/items"), timeout=30).json() == [{"id": 1, "name": "seeded at startup"}]
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            created = client.post("/items", json={"name": "from httpx"})
            assert (created.status_code, created.json()) == (201, {"name": "from httpx", "id": 2})
            assert client.get("/items/2").json() == {"name": "from httpx", "id": 2}
            assert client.get("/items/9").status_code == 404
        assert requests.post(server.url("/login"), data={"user": "ada"}, timeout=30).text == "welcome ada"
        with server.websocket_connect("/shout") as websocket:
            websocket.send("quiet please")
            assert websocket.recv(timeout=30) == "QUIET PLEASE"


def test_starlette_factory_import_string_gives_each_server_fresh_state() -> None:
    with (
        UvicornTestServer("apps_starlette:create_app", factory=True) as first,
        UvicornTestServer("apps_starlette:create_app", factory=True) as second,
    ):
        requests.post(first.url("/items"), json={"name": "only in the first"}, timeout=30).raise_for_status()
        assert len(requests.get(first.url("/items"), timeout=30).json()) == 2
        assert len(requests.get(second.url("/items"), timeout=30).json()) == 1


def test_starlette_handler_error_is_answered_500_and_raised_at_stop() -> None:
    server = UvicornTestServer(apps_starlette.create_app()).start()
    try:
        assert requests.get(server.url("/crash"), timeout=30).status_code == 500
    finally:
        with pytest.raises(ServerExceptionsError, match=r"ZeroDivisionError: starlette handler divided by zero"):
            server.stop()


# -- Django ---------------------------------------------------------------------------------


def test_django_sync_and_async_views_answer_through_the_asgi_handler() -> None:
    with UvicornTestServer(apps_django.application) as server:
        response = requests.get(server.url("/hello/"), params={"name": "pony"}, timeout=30)
        assert response.json() == {"hello": "pony", "method": "GET"}
        assert requests.get(server.url("/async/"), timeout=30).json() == {"async": True, "path": "/async/"}
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            created = client.post("/echo/", json={"answer": 42})
        assert (created.status_code, created.json()) == (201, {"received": {"answer": 42}})
    assert server.errors == [], "Django does not speak lifespan; the harness must not count that as an app error"


def test_django_import_string_serves_the_project() -> None:
    with UvicornTestServer("apps_django:application") as server:
        assert requests.get(server.url("/hello/"), timeout=30).json()["hello"] == "django"
        # CommonMiddleware's APPEND_SLASH redirects to the URL with the slash.
        response = requests.get(server.url("/hello"), allow_redirects=False, timeout=30)
        assert (response.status_code, response.headers["location"]) == (301, "/hello/")
        assert requests.get(server.url("/missing/"), timeout=30).status_code == 404


def test_django_turns_a_view_exception_into_its_own_500_so_the_harness_records_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="django.request"), UvicornTestServer(apps_django.application) as server:
        assert requests.get(server.url("/boom/"), timeout=30).status_code == 500
    assert server.errors == []
    errors = [record for record in caplog.records if record.name == "django.request"]
    assert errors, "Django logs the view's exception to django.request"
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], LookupError)


def test_django_rejects_a_host_outside_allowed_hosts() -> None:
    with UvicornTestServer(apps_django.application) as server:
        response = requests.get(server.url("/hello/"), headers={"Host": "evil.example"}, timeout=30)
    assert response.status_code == 400


# -- Litestar -------------------------------------------------------------------------------


def test_litestar_app_serves_typed_json_and_websockets() -> None:
    with UvicornTestServer(apps_litestar.create_app()) as server:
        assert requests.get(server.url("/books"), timeout=30).json() == [{"title": "Dune", "year": 1965}]
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            created = client.post("/books", json={"title": "Solaris", "year": 1961})
            assert (created.status_code, created.json()) == (201, {"title": "Solaris", "year": 1961})
            assert client.get("/books/1").json()["title"] == "Solaris"
            missing = client.get("/books/7")
            assert (missing.status_code, missing.json()["detail"]) == (404, "no book 7")
            invalid = client.post("/books", json={"title": "no year"})
            assert invalid.status_code == 400
        with server.websocket_connect("/reverse") as websocket:
            websocket.send("stressed")
            assert websocket.recv(timeout=30) == "desserts"


def test_litestar_factory_import_string_serves_the_app() -> None:
    with UvicornTestServer("apps_litestar:create_app", factory=True) as server:
        assert requests.get(server.url("/books/0"), timeout=30).json() == {"title": "Dune", "year": 1965}


def test_litestar_turns_a_handler_exception_into_its_own_500_so_the_harness_records_none() -> None:
    with UvicornTestServer(apps_litestar.create_app()) as server:
        response = requests.get(server.url("/crash"), timeout=30)
    assert (response.status_code, response.json()) == (500, {"status_code": 500, "detail": "Internal Server Error"})
    assert server.errors == []

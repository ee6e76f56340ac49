"""AsyncTestClient over HTTP: httpx-style and aiohttp-style arguments against a live server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import PlainTextResponse, RedirectResponse

from uvicorn_testserver import (
    AsyncTestClient,
    AsyncTestServer,
    ClientTimeoutError,
    InvalidResponseTypeError,
    ServerStateError,
    UvicornTestServer,
    create_test_server,
)


def _echo_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def echo(request: Request) -> dict[str, Any]:
        return {
            "method": request.method,
            "query": dict(request.query_params),
            "headers": {k: v for k, v in request.headers.items() if k.startswith("x-") or k == "content-type"},
            "body": (await request.body()).decode(),
            "cookies": request.cookies,
            "authorization": request.headers.get("authorization"),
        }

    @app.head("/echo")
    async def echo_head() -> Response:
        return Response(headers={"X-Head": "yes"})

    @app.get("/redirect")
    async def redirect() -> RedirectResponse:
        return RedirectResponse("/echo?redirected=1")

    @app.get("/login")
    async def login() -> Response:
        response = PlainTextResponse("logged in")
        response.set_cookie("session", "abc123")
        return response

    @app.get("/slow")
    async def slow() -> str:
        await asyncio.sleep(1)
        return "late"

    @app.get("/latin1")
    async def latin1() -> Response:
        return Response("café".encode("latin-1"), media_type="text/plain; charset=latin-1")

    @app.get("/not-json")
    async def not_json() -> PlainTextResponse:
        return PlainTextResponse("<html>oops</html>")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive()

    return app


@pytest_asyncio.fixture
async def server() -> AsyncIterator[AsyncTestServer]:
    async with create_test_server(_echo_app()) as server:
        yield server


@pytest.mark.asyncio
async def test_httpx_style_json_params_and_headers_are_sent(server: AsyncTestServer) -> None:
    response = await server.client.post("/echo", json={"a": 1}, params={"page": "2"}, headers={"X-Trace": "t-1"})
    body = await response.json()
    assert body["query"] == {"page": "2"}
    assert body["headers"] == {"x-trace": "t-1", "content-type": "application/json"}
    assert body["body"] == '{"a": 1}'


@pytest.mark.asyncio
async def test_httpx_style_content_is_sent_as_the_raw_body(server: AsyncTestServer) -> None:
    response = await server.client.put("/echo", content=b"raw bytes", headers={"Content-Type": "text/plain"})
    assert (await response.json())["body"] == "raw bytes"


@pytest.mark.asyncio
async def test_httpx_style_form_data_is_url_encoded(server: AsyncTestServer) -> None:
    body = await (await server.client.patch("/echo", data={"name": "Ada", "lang": "py"})).json()
    assert body["body"] == "name=Ada&lang=py"
    assert body["headers"]["content-type"] == "application/x-www-form-urlencoded"


@pytest.mark.asyncio
async def test_follow_redirects_false_returns_the_redirect_itself(server: AsyncTestServer) -> None:
    not_followed = await server.client.get("/redirect", follow_redirects=False)
    assert not_followed.status_code == 307
    assert not_followed.headers["location"] == "/echo?redirected=1"
    followed = await server.client.get("/redirect")  # like fastapi-testing, redirects are followed by default
    assert (await followed.json())["query"] == {"redirected": "1"}
    assert (await server.client.get("/redirect", allow_redirects=False)).status_code == 307  # aiohttp's name


@pytest.mark.asyncio
async def test_timeout_number_raises_client_timeout_error_naming_the_request(server: AsyncTestServer) -> None:
    with pytest.raises(
        ClientTimeoutError, match=r"GET http://127\.0\.0\.1:\d+/slow did not complete within timeout=0\.2s"
    ):
        await server.client.get("/slow", timeout=0.2)
    with pytest.raises(TimeoutError):  # it is also a TimeoutError
        await server.client.get("/slow", timeout=aiohttp.ClientTimeout(total=0.2))


@pytest.mark.asyncio
async def test_cookies_set_by_the_server_are_sent_back_to_the_loopback_host(server: AsyncTestServer) -> None:
    await (await server.client.get("/login")).expect_status(200)
    assert (await (await server.client.get("/echo")).json())["cookies"] == {"session": "abc123"}
    explicit = await server.client.get("/echo", cookies={"flavour": "oat"})
    assert (await explicit.json())["cookies"] == {"session": "abc123", "flavour": "oat"}


@pytest.mark.asyncio
async def test_auth_tuple_becomes_basic_auth(server: AsyncTestServer) -> None:
    body = await (await server.client.get("/echo", auth=("ada", "secret"))).json()
    assert body["authorization"] == "Basic YWRhOnNlY3JldA=="


@pytest.mark.asyncio
async def test_every_method_helper_sends_its_method(server: AsyncTestServer) -> None:
    client = server.client
    for send, method in [
        (client.get, "GET"),
        (client.post, "POST"),
        (client.put, "PUT"),
        (client.patch, "PATCH"),
        (client.delete, "DELETE"),
        (client.options, "OPTIONS"),
    ]:
        assert (await (await send("/echo")).json())["method"] == method
    head = await client.head("/echo")
    assert head.headers["x-head"] == "yes"
    assert head.content == b""
    assert (await (await client.request("post", "echo")).json())["method"] == "POST"


@pytest.mark.asyncio
async def test_text_uses_the_charset_of_the_response(server: AsyncTestServer) -> None:
    assert await (await server.client.get("/latin1")).text() == "café"


@pytest.mark.asyncio
async def test_expect_status_mismatch_shows_both_statuses_and_the_body_start(server: AsyncTestServer) -> None:
    response = await server.client.get("/nowhere")
    with pytest.raises(
        AssertionError,
        match=r"""expected status 200, got 404 Not Found from GET \S+/nowhere; body starts: '{"detail":"Not Found"}'""",
    ):
        await response.expect_status(200)
    assert await response.expect_status(404) is response


@pytest.mark.asyncio
async def test_json_of_a_non_json_body_raises_value_error_with_the_body(server: AsyncTestServer) -> None:
    response = await server.client.get("/not-json")
    with pytest.raises(ValueError, match="Expecting value") as info:
        await response.json()
    assert "answered 200 OK with a body that is not JSON: '<html>oops</html>'" in info.value.__notes__[0]


@pytest.mark.asyncio
async def test_websocket_on_an_http_response_raises_invalid_response_type(server: AsyncTestServer) -> None:
    response = await server.client.get("/echo")
    with pytest.raises(
        InvalidResponseTypeError, match=r"This response is not a WebSocket connection: GET .* answered 200"
    ):
        response.websocket()
    assert isinstance(InvalidResponseTypeError(), TypeError)


@pytest.mark.asyncio
async def test_http_members_on_a_websocket_raise_invalid_response_type(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/ws")
    with pytest.raises(InvalidResponseTypeError, match="WebSocket connections don't have status codes"):
        _ = ws.status_code
    with pytest.raises(InvalidResponseTypeError, match="WebSocket connections don't have status codes"):
        await ws.expect_status(200)
    with pytest.raises(InvalidResponseTypeError, match="is for HTTP responses"):
        _ = ws.headers
    with pytest.raises(InvalidResponseTypeError, match="Cannot get JSON directly from WebSocket response"):
        await ws.json()
    with pytest.raises(InvalidResponseTypeError, match="Cannot get text directly from WebSocket response"):
        await ws.text()
    assert ws.is_websocket
    assert not ws.websocket().closed


@pytest.mark.asyncio
async def test_options_without_an_aiohttp_counterpart_raise_type_error(server: AsyncTestServer) -> None:
    with pytest.raises(TypeError, match=r"has no files= option: pass data=aiohttp\.FormData"):
        await server.client.post("/echo", files={"f": b"x"})
    with pytest.raises(TypeError, match="pass either content= or data=, not both"):
        await server.client.post("/echo", content=b"a", data=b"b")
    with pytest.raises(TypeError, match=r"pass either follow_redirects= \(httpx\) or allow_redirects= \(aiohttp\)"):
        await server.client.get("/echo", follow_redirects=True, allow_redirects=True)
    with pytest.raises(TypeError, match=r"timeout must be a number of seconds, None or an aiohttp\.ClientTimeout"):
        await server.client.get("/echo", timeout="soon")


@pytest.mark.asyncio
async def test_client_works_against_a_thread_harness_of_your_own() -> None:
    async with UvicornTestServer(_echo_app()) as harness, AsyncTestClient(harness.base_url) as client:
        assert (await (await client.get("/echo", params={"q": "1"})).json())["query"] == {"q": "1"}
    assert client.closed


@pytest.mark.asyncio
async def test_client_used_from_another_event_loop_raises_state_error() -> None:
    async with UvicornTestServer(_echo_app()) as harness, AsyncTestClient(harness.base_url) as client:
        await client.get("/echo")

        def use_in_new_loop() -> None:
            asyncio.run(client.get("/echo"))

        with pytest.raises(ServerStateError, match="was first used in another event loop"):
            await asyncio.to_thread(use_in_new_loop)

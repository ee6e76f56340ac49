"""AsyncTestClient WebSockets: WebSocketConfig and the client.ws helpers, against a live server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from uvicorn_testserver import (
    AsyncTestServer,
    ClientTimeoutError,
    WebSocketClosedError,
    WebSocketConfig,
    create_test_server,
)

disconnects: list[int] = []


def _ws_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(websocket: WebSocket) -> None:
        protocols = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol=protocols[0] if protocols else None)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    disconnects.append(message["code"])
                    return
                if message.get("text") is not None:
                    await websocket.send_text(message["text"])
                else:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect as exc:
            disconnects.append(exc.code)

    @app.websocket("/headers")
    async def headers(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(
            {"x-test": websocket.headers.get("x-test"), "extensions": websocket.headers.get("sec-websocket-extensions")}
        )
        await websocket.receive()

    @app.websocket("/binary-then-text")
    async def binary_then_text(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_bytes(b"\x00\x01")
        await websocket.send_text("plain")
        await websocket.receive()

    @app.websocket("/burst")
    async def burst(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("one")
        await websocket.send_bytes(b"two")
        await websocket.send_json({"three": 3})
        await websocket.receive()  # then quiet until the client goes

    @app.websocket("/chatter")
    async def chatter(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text("more")
                await asyncio.sleep(0.01)
        except WebSocketDisconnect:
            pass

    @app.websocket("/close-at-once")
    async def close_at_once(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(code=4001, reason="go away")

    @app.websocket("/silent")
    async def silent(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive()

    @app.websocket("/big")
    async def big(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_bytes(b"x" * 4096)
        await websocket.receive()

    return app


@pytest_asyncio.fixture
async def server() -> AsyncIterator[AsyncTestServer]:
    async with create_test_server(_ws_app()) as server:
        yield server


@pytest.mark.asyncio
async def test_text_json_and_binary_round_trip(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/echo")
    await server.client.ws.send_text(ws, "hello")
    assert await server.client.ws.receive_text(ws) == "hello"
    await server.client.ws.send_json(ws, {"list": [1, 2]})
    assert await server.client.ws.receive_json(ws) == {"list": [1, 2]}
    await server.client.ws.send_binary(ws, b"\xff\x00")
    assert await server.client.ws.receive_binary(ws) == b"\xff\x00"
    await server.client.ws.send_text(ws, "any")
    assert await server.client.ws.receive(ws) == "any"


@pytest.mark.asyncio
async def test_config_subprotocol_headers_and_compression_reach_the_server(server: AsyncTestServer) -> None:
    config = WebSocketConfig(
        subprotocols=["test-protocol"],
        extra_headers={"X-Test": "test-value"},
        compression="deflate",
        ping_interval=30.0,
        ping_timeout=10.0,
        max_size=1024 * 1024,
        max_queue=16,
        timeout=5.0,
    )
    ws = await server.client.websocket("/headers", config)
    seen = await server.client.ws.receive_json(ws)
    assert seen["x-test"] == "test-value"
    assert "permessage-deflate" in seen["extensions"]
    assert ws.websocket().compress > 0  # negotiated (the server picks the window size)

    echo = await server.client.websocket("/echo", config)
    assert echo.websocket().protocol == "test-protocol"


def test_config_maps_onto_aiohttp_ws_connect() -> None:
    options = WebSocketConfig(
        subprotocols=["a", "b"], compression=True, extra_headers={"X": "1"}, ping_interval=5, max_size=None, timeout=7
    ).ws_connect_options()
    assert options["protocols"] == ("a", "b")
    assert options["compress"] == 15
    assert options["headers"] == {"X": "1"}
    assert options["heartbeat"] == 5
    assert options["max_msg_size"] == 0  # aiohttp's "no limit"
    assert options["timeout"] == aiohttp.ClientWSTimeout(ws_receive=None, ws_close=7)
    assert WebSocketConfig().ws_connect_options()["compress"] == 0
    assert WebSocketConfig(compression=10).ws_connect_options()["compress"] == 10


def test_config_rejects_a_compression_aiohttp_cannot_do() -> None:
    with pytest.raises(ValueError, match="compression must be None, False, True, 'deflate' or a window size"):
        WebSocketConfig(compression="zstd")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_options_go_to_ws_connect_and_win_over_config(server: AsyncTestServer) -> None:
    ws = await server.client.websocket(
        "/headers", WebSocketConfig(extra_headers={"X-Test": "from config"}), options={"headers": {"X-Test": "options"}}
    )
    assert (await server.client.ws.receive_json(ws))["x-test"] == "options"


@pytest.mark.asyncio
async def test_receiving_the_wrong_type_raises_type_error_naming_both(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/binary-then-text")
    with pytest.raises(
        TypeError, match=r"receive_text\(\) expected a text message \(str\) but received a binary message \(bytes\)"
    ):
        await server.client.ws.receive_text(ws)
    with pytest.raises(
        TypeError,
        match=r"receive_binary\(\) expected a binary message \(bytes\) but received a text message \(str\): 'plain'",
    ):
        await server.client.ws.receive_binary(ws)


@pytest.mark.asyncio
async def test_receive_json_of_a_binary_message_says_how_to_read_it(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/binary-then-text")
    with pytest.raises(
        TypeError,
        match=r"expected a text message \(str\) but received a binary .* Use receive_binary\(\) and json\.loads\(\)",
    ):
        await server.client.ws.receive_json(ws)


@pytest.mark.asyncio
async def test_expect_message_compares_json_text_and_bytes(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/echo")
    await server.client.ws.send_json(ws, {"b": 2, "a": 1})
    assert await server.client.ws.expect_message(ws, {"a": 1, "b": 2}, timeout=30) == {"a": 1, "b": 2}
    await server.client.ws.send_text(ws, "exact")
    await server.client.ws.expect_message(ws, "exact", timeout=30)
    await server.client.ws.send_binary(ws, b"raw")
    await server.client.ws.expect_message(ws, b"raw", timeout=30)
    await server.client.ws.send_text(ws, "something else")
    with pytest.raises(AssertionError, match="expected the message 'exact', received 'something else'"):
        await server.client.ws.expect_message(ws, "exact", timeout=30)


@pytest.mark.asyncio
async def test_expect_message_times_out_with_a_clear_error_and_the_socket_stays_usable(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/echo")
    with pytest.raises(
        TimeoutError, match=r"Timeout waiting for expected message 'hi': nothing on the WebSocket .* within 0\.1s"
    ):
        await server.client.ws.expect_message(ws, "hi", timeout=0.1)
    await server.client.ws.send_text(ws, "hi")
    await server.client.ws.expect_message(ws, "hi", timeout=30)


@pytest.mark.asyncio
async def test_receive_on_a_silent_socket_raises_client_timeout_error(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/silent", WebSocketConfig(timeout=0.2))
    with pytest.raises(ClientTimeoutError, match=r"no message arrived on the WebSocket .*/silent within 0\.2s"):
        await server.client.ws.receive_text(ws)  # the config's timeout is the default


@pytest.mark.asyncio
async def test_drain_messages_returns_what_arrived_until_a_quiet_period(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/burst")
    assert await server.client.ws.drain_messages(ws, timeout=0.2) == ["one", b"two", '{"three":3}']
    assert await server.client.ws.drain_messages(ws, timeout=0.05) == []


@pytest.mark.asyncio
async def test_drain_messages_gives_up_on_an_app_that_never_goes_quiet(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/chatter")
    with pytest.raises(ClientTimeoutError, match=r"over 0\.3s without a quiet period of 0\.1s; the app keeps sending"):
        await server.client.ws.drain_messages(ws, timeout=0.1, max_wait=0.3)


@pytest.mark.asyncio
async def test_receive_after_the_server_closed_raises_websocket_closed_error(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/close-at-once")
    with pytest.raises(
        WebSocketClosedError, match=r"the WebSocket .*/close-at-once is closed \(close code 4001, reason 'go away'\)"
    ):
        await server.client.ws.receive_text(ws)
    # Once closed, every call fails at once instead of waiting.
    with pytest.raises(WebSocketClosedError, match="is closed"):
        await server.client.ws.receive_text(ws, timeout=30)
    with pytest.raises(WebSocketClosedError, match="Nothing more can be sent or received on it"):
        await server.client.ws.send_text(ws, "too late")
    assert await server.client.ws.drain_messages(ws) == []


@pytest.mark.asyncio
async def test_send_after_the_test_closed_it_raises_websocket_closed_error(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/echo")
    await ws.websocket().close()
    with pytest.raises(WebSocketClosedError, match=r"is closed \(close code 1000"):
        await server.client.ws.send_json(ws, {"late": True})


@pytest.mark.asyncio
async def test_message_over_max_size_closes_with_a_clear_error(server: AsyncTestServer) -> None:
    ws = await server.client.websocket("/big", WebSocketConfig(max_size=1024))
    with pytest.raises(WebSocketClosedError, match=r"close code 1009.*after the error"):
        await server.client.ws.receive_binary(ws)


@pytest.mark.asyncio
async def test_handshake_refused_by_a_missing_route_says_so(server: AsyncTestServer) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await server.client.websocket("/nowhere")
    assert "the server refused the WebSocket handshake" in info.value.__notes__[0]


@pytest.mark.asyncio
async def test_stop_closes_the_websockets_the_client_opened() -> None:
    disconnects.clear()
    async with create_test_server(_ws_app()) as server:
        first = await server.client.websocket("/echo")
        second = await server.client.websocket("/echo")
    assert first.websocket().closed
    assert second.websocket().closed
    assert disconnects == [1000, 1000]  # closed politely by the client, not cut by the server


@pytest.mark.asyncio
async def test_helpers_refuse_an_http_response_or_other_objects(server: AsyncTestServer) -> None:
    http = await server.client.get("/nowhere")
    with pytest.raises(TypeError, match="This response is not a WebSocket connection"):
        await server.client.ws.send_text(http, "x")
    with pytest.raises(TypeError, match=r"expected a WebSocket from client\.websocket"):
        await server.client.ws.receive_text("ws://nope")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_receive_timeout_keeps_the_connection_healthy_and_loses_no_message(server: AsyncTestServer) -> None:
    disconnects.clear()
    ws = await server.client.websocket("/echo")
    for _ in range(3):
        with pytest.raises(ClientTimeoutError):
            await server.client.ws.receive_text(ws, timeout=0.05)
    await server.client.ws.send_text(ws, "after the timeouts")
    assert await server.client.ws.receive_text(ws, timeout=30) == "after the timeouts"
    await ws.websocket().close()
    assert ws.websocket().close_code == 1000  # a clean closing handshake, not 1006
    deadline = asyncio.get_running_loop().time() + 5
    while not disconnects and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert disconnects == [1000]


@pytest.mark.asyncio
async def test_stop_right_after_a_client_abandons_its_closing_handshake_is_clean() -> None:
    # aiohttp, after its own receive timeout, sends a close frame and drops the connection at once.
    # Stopping then meets a WebSocket that is still closing on the server: that must not crash the stop.
    for _ in range(5):
        async with create_test_server(_ws_app()) as server, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(server.url("/silent"))
            with pytest.raises(TimeoutError):
                await ws.receive(timeout=0.01)
            await ws.close()

"""AsyncTestServer / create_test_server in thread mode: real servers on loopback, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import requests
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from uvicorn_testserver import (
    AsyncTestServer,
    ServerExceptionsError,
    ServerStartupError,
    ServerStateError,
    UvicornTestServer,
    WebSocketConfig,
    create_test_server,
)

# -- the two examples of the issue, as fastapi-testing users write them ----------------------


@pytest.mark.asyncio
async def test_hello():
    async with create_test_server() as server:  # no app given -> a fresh FastAPI app

        @server.app.get("/hello")  # routes may be added after start
        async def hello():
            return {"message": "Hello, World!"}

        response = await server.client.get("/hello")
        await response.expect_status(200)
        assert (await response.json())["message"] == "Hello, World!"


@pytest.mark.asyncio
async def test_ws():
    async with create_test_server() as server:

        @server.app.websocket("/ws/echo")
        async def echo(websocket: WebSocket):
            await websocket.accept(subprotocol="test-protocol")
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    if message.get("text") is not None:
                        await websocket.send_json(json.loads(message["text"]))
                    elif message.get("bytes") is not None:
                        await websocket.send_bytes(message["bytes"])
            except WebSocketDisconnect:
                return

        ws = await server.client.websocket("/ws/echo", WebSocketConfig(subprotocols=["test-protocol"]))
        try:
            await server.client.ws.send_json(ws, {"message": "test"})
            assert await server.client.ws.receive_json(ws) == {"message": "test"}
            await server.client.ws.send_binary(ws, b"binary test")
            assert await server.client.ws.receive_binary(ws) == b"binary test"
        finally:
            await ws.websocket().close()


# -- the app -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_routes_added_before_start_are_served() -> None:
    server = AsyncTestServer()

    @server.app.get("/early")
    async def early() -> dict[str, str]:
        return {"added": "before start"}

    async with server:
        response = await server.client.get("/early")
        assert await response.json() == {"added": "before start"}


@pytest.mark.asyncio
async def test_middleware_added_before_start_wraps_every_route() -> None:
    server = AsyncTestServer()

    async def tag(request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["X-Tagged"] = "yes"
        return response

    server.app.add_middleware(BaseHTTPMiddleware, dispatch=tag)
    async with server:

        @server.app.get("/late")
        async def late() -> dict[str, bool]:
            return {"ok": True}

        response = await server.client.get("/late")
        assert response.headers["x-tagged"] == "yes"


@pytest.mark.asyncio
async def test_include_router_serves_its_routes_with_their_prefix() -> None:
    router = APIRouter(prefix="/items", tags=["items"])

    @router.get("/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    async with create_test_server() as server:
        server.app.include_router(router)
        response = await server.client.get("/items/42")
        await response.expect_status(200)
        assert await response.json() == {"item_id": 42}
        await (await server.client.get("/items/not-a-number")).expect_status(422)


@pytest.mark.asyncio
async def test_dependency_override_is_served_and_clearing_it_restores_the_original() -> None:
    def get_user() -> str:
        return "real user"

    async with create_test_server() as server:

        @server.app.get("/me")
        async def me(user: str = Depends(get_user)) -> dict[str, str]:
            return {"user": user}

        assert await (await server.client.get("/me")).json() == {"user": "real user"}
        server.app.dependency_overrides[get_user] = lambda: "test user"
        assert await (await server.client.get("/me")).json() == {"user": "test user"}
        server.app.dependency_overrides.clear()
        assert await (await server.client.get("/me")).json() == {"user": "real user"}


@pytest.mark.asyncio
async def test_error_responses_keep_their_status_and_body() -> None:
    async with create_test_server() as server:

        @server.app.get("/teapot")
        async def teapot() -> None:
            raise HTTPException(status_code=418, detail="short and stout")

        @server.app.get("/broken-on-purpose")
        async def broken_on_purpose() -> None:
            raise HTTPException(status_code=500, detail="the app chose this")

        await (await server.client.get("/missing")).expect_status(404)
        teapot_response = await (await server.client.get("/teapot")).expect_status(418)
        assert await teapot_response.json() == {"detail": "short and stout"}
        chosen = await (await server.client.get("/broken-on-purpose")).expect_status(500)
        assert await chosen.json() == {"detail": "the app chose this"}
        await (await server.client.post("/teapot")).expect_status(405)
    # An HTTPException 500 is a response the app chose, not an error: the exit raised nothing.
    assert server.errors == []


@pytest.mark.asyncio
async def test_fifty_concurrent_requests_all_succeed() -> None:
    async with create_test_server() as server:
        in_flight = 0
        most = 0

        @server.app.get("/slowish/{n}")
        async def slowish(n: int) -> dict[str, int]:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            return {"n": n}

        responses = await asyncio.gather(*(server.client.get(f"/slowish/{n}") for n in range(50)))
        assert [(await r.expect_status(200)) and (await r.json())["n"] for r in responses] == list(range(50))
        assert most > 1  # they really overlapped on the server


@pytest.mark.asyncio
async def test_custom_lifespan_state_reaches_requests_and_shutdown_runs_on_exit() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"greeting": "hello from lifespan"}
        events.append("shutdown")

    async with create_test_server(lifespan=lifespan) as server:

        @server.app.get("/greeting")
        async def greeting(request: Request) -> dict[str, str]:
            return {"greeting": request.state.greeting}

        assert await (await server.client.get("/greeting")).json() == {"greeting": "hello from lifespan"}
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


@pytest.mark.asyncio
async def test_bare_async_generator_lifespan_as_fastapi_testing_documented_works() -> None:
    events: list[str] = []

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async with create_test_server(lifespan=lifespan):
        assert events == ["startup"]
    assert events == ["startup", "shutdown"]


@pytest.mark.asyncio
async def test_any_asgi_app_can_be_served() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"plain ASGI"})

    async with create_test_server(app, lifespan="off") as server:
        assert await (await server.client.get("/")).text() == "plain ASGI"


# -- a sync client inside an async test ------------------------------------------------------


@pytest.mark.asyncio
async def test_blocking_client_inside_async_test_gets_answers_in_thread_mode() -> None:
    async with create_test_server() as server:

        @server.app.get("/sync")
        async def sync_route() -> dict[str, str]:
            return {"client": "requests"}

        # Blocks this loop; the server's own loop in its thread answers anyway.
        assert requests.get(server.url("/sync"), timeout=30).json() == {"client": "requests"}


def test_sync_websocket_connect_echoes_in_a_with_block() -> None:
    app = FastAPI()

    @app.websocket("/ws")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol="chat")
        try:
            while True:
                await websocket.send_text("echo: " + await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    with UvicornTestServer(app) as server, server.websocket_connect("/ws", subprotocols=["chat"]) as ws:
        ws.send("hi")
        assert ws.recv(timeout=30) == "echo: hi"
        assert ws.subprotocol == "chat"


def test_sync_websocket_connect_before_start_raises_state_error() -> None:
    server = UvicornTestServer(FastAPI())
    with pytest.raises(ServerStateError, match=r"is not running; call start\(\) before websocket_connect"):
        server.websocket_connect("/ws")


# -- lifecycle and failures -----------------------------------------------------------------


@pytest.mark.asyncio
async def test_start_raises_startup_error_when_lifespan_fails() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise ConnectionRefusedError("database is down")
        yield

    server = AsyncTestServer(lifespan=lifespan)
    expected = r"failed to start: lifespan startup raised .*database is down"
    with pytest.raises(ServerStartupError, match=expected) as info:
        await server.start()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert not server.is_running
    with pytest.raises(ServerStateError, match="is not running, and its client exists only between"):
        _ = server.client


@pytest.mark.asyncio
async def test_start_raises_startup_error_when_startup_hangs_past_the_timeout() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.Event().wait()
        yield

    server = AsyncTestServer(lifespan=lifespan, startup_timeout=0.3)
    with pytest.raises(ServerStartupError, match=r"was not ready within startup_timeout=0.3s"):
        await server.start()


@pytest.mark.asyncio
async def test_exit_raises_server_exceptions_error_after_an_unhandled_app_error() -> None:
    server = create_test_server()

    @server.app.get("/boom")
    async def boom() -> None:
        raise ZeroDivisionError("boom")

    async def run() -> None:
        async with server:
            await (await server.client.get("/boom")).expect_status(500)

    with pytest.raises(ServerExceptionsError, match=r"raised 1 unhandled exception") as info:
        await run()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


@pytest.mark.asyncio
async def test_raise_server_exceptions_false_keeps_errors_for_inspection() -> None:
    async with create_test_server(raise_server_exceptions=False) as server:

        @server.app.get("/boom")
        async def boom() -> None:
            raise KeyError("missing")

        await (await server.client.get("/boom")).expect_status(500)
    assert [type(error) for error in server.errors] == [KeyError]


@pytest.mark.asyncio
async def test_failure_in_the_block_stays_the_error_and_gets_the_app_errors_as_a_note() -> None:
    server = create_test_server()

    @server.app.get("/boom")
    async def boom() -> None:
        raise ValueError("bad value")

    async def run() -> None:
        async with server:
            await (await server.client.get("/boom")).expect_status(200)

    with pytest.raises(AssertionError, match="expected status 200, got 500") as info:
        await run()
    assert any("ValueError: bad value" in note for note in info.value.__notes__)


@pytest.mark.asyncio
async def test_client_is_closed_after_stop_and_a_restart_gets_a_new_one_on_the_same_port() -> None:
    server = AsyncTestServer()

    @server.app.get("/ping")
    async def ping() -> str:
        return "pong"

    async with server:
        first_client, first_port = server.client, server.port
        assert await (await first_client.get("/ping")).json() == "pong"
    assert first_client.closed
    with pytest.raises(ServerStateError, match="is closed: its server stopped"):
        await first_client.get("/ping")
    async with server:
        assert server.client is not first_client
        assert server.port == first_port
        assert await (await server.client.get("/ping")).json() == "pong"


@pytest.mark.asyncio
async def test_start_twice_raises_state_error() -> None:
    async with create_test_server() as server:
        with pytest.raises(ServerStateError, match="is already running"):
            await server.start()


@pytest.mark.asyncio
async def test_start_and_stop_never_block_the_event_loop() -> None:
    # The lifespan, on the server's loop, waits for the test's loop to answer. Were start() or
    # stop() to block the test's loop, nobody would answer: startup_timeout, or a forced exit.
    entered, started, leaving, left = (threading.Event() for _ in range(4))
    completed: list[str] = []

    async def wait_for(flag: threading.Event) -> None:
        async with asyncio.timeout(30):
            while not flag.is_set():  # noqa: ASYNC110 - set by a task on the other thread's loop
                await asyncio.sleep(0.001)

    async def answer(question: threading.Event, reply: threading.Event) -> None:
        await wait_for(question)
        reply.set()

    @asynccontextmanager
    async def lifespan_that_needs_the_tests_loop(app: FastAPI) -> AsyncIterator[None]:
        entered.set()
        await wait_for(started)
        yield
        leaving.set()
        await wait_for(left)
        completed.append("shutdown")

    server = AsyncTestServer(lifespan=lifespan_that_needs_the_tests_loop)
    answers = [asyncio.create_task(answer(entered, started)), asyncio.create_task(answer(leaving, left))]
    async with server:
        assert started.is_set()
    await asyncio.gather(*answers)
    assert completed == ["shutdown"]
    assert "forcing its exit" not in server.log.text


@pytest.mark.asyncio
async def test_cancelling_a_start_leaves_nothing_running() -> None:
    @asynccontextmanager
    async def slow_lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.sleep(0.3)
        yield

    server = AsyncTestServer(lifespan=slow_lifespan)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await server.start()
    assert not server.is_running
    assert not [t for t in threading.enumerate() if t.name == f"uvicorn-testserver 127.0.0.1:{server.port}"]
    with pytest.raises(ConnectionRefusedError):  # the start finished in its thread, then was undone
        socket.create_connection(("127.0.0.1", server.port), timeout=30).close()


@pytest.mark.asyncio
async def test_no_app_without_fastapi_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # what `import fastapi` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install fastapi \(the extra uvicorn-testserver\[fastapi\]\)"):
        create_test_server()


def test_lifespan_with_an_app_of_your_own_raises_type_error() -> None:
    with pytest.raises(TypeError, match="lifespan= is for the FastAPI app created when no app is given"):
        AsyncTestServer(FastAPI(), lifespan=lambda app: None)


def test_unknown_mode_raises_value_error() -> None:
    with pytest.raises(ValueError, match="mode must be one of thread, loop, process, not 'fork'"):
        AsyncTestServer(mode="fork")  # type: ignore[arg-type]


def test_port_before_start_raises_state_error() -> None:
    with pytest.raises(ServerStateError, match="has no port yet"):
        _ = AsyncTestServer().base_url


@pytest.mark.asyncio
async def test_repeated_runs_with_requests_and_websockets_leave_no_fds_or_threads() -> None:
    server = AsyncTestServer()

    @server.app.websocket("/ws")
    async def hold(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.receive_text()

    async def run_once() -> None:
        async with server:
            await server.client.get("/missing")
            await server.client.websocket("/ws")  # left open: the stop closes it

    await run_once()  # warm-up: imports and lazily created objects are not leaks
    fds, threads = len(os.listdir("/proc/self/fd")), _threads_but_the_loop_executor()
    for _ in range(5):
        await run_once()
    # Closed transports let go of their sockets on a later loop iteration: wait for that, with a deadline.
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert len(os.listdir("/proc/self/fd")) <= fds
    assert _threads_but_the_loop_executor() <= threads


def _threads_but_the_loop_executor() -> set[threading.Thread]:
    # asyncio.to_thread starts the loop's default executor's workers ("asyncio_N") on demand; they end with the loop.
    return {thread for thread in threading.enumerate() if not thread.name.startswith("asyncio_")}

"""mode="loop": uvicorn as a task on the test's own event loop, with the thread harness's guarantees."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from starlette.responses import StreamingResponse

from apps import shutdown_hangs_app
from uvicorn_testserver import (
    AsyncTestServer,
    PortInUseError,
    ServerExceptionsError,
    ServerStartupError,
    create_test_server,
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.asyncio
async def test_app_and_test_share_a_queue_created_by_the_test() -> None:
    jobs: asyncio.Queue[str] = asyncio.Queue()  # bound to the test's loop

    async with create_test_server(mode="loop") as server:

        @server.app.post("/jobs")
        async def enqueue(request: Request) -> dict[str, int]:
            await jobs.put((await request.body()).decode())
            return {"queued": jobs.qsize()}

        response = await server.client.post("/jobs", content=b"resize image 7")
        assert await response.json() == {"queued": 1}
        assert await asyncio.wait_for(jobs.get(), timeout=30) == "resize image 7"


@pytest.mark.asyncio
async def test_server_runs_on_the_callers_loop_and_thread() -> None:
    test_loop = asyncio.get_running_loop()
    seen: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        seen["loop"] = asyncio.get_running_loop()
        seen["thread"] = threading.current_thread()
        yield

    async with create_test_server(lifespan=lifespan, mode="loop") as server:
        assert server.is_running
    assert seen == {"loop": test_loop, "thread": threading.current_thread()}
    assert not [t for t in threading.enumerate() if t.name == f"uvicorn-testserver 127.0.0.1:{server.port}"]


@pytest.mark.asyncio
async def test_lifespan_uses_an_event_set_by_the_test_and_shutdown_runs_on_exit() -> None:
    released = asyncio.Event()
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, asyncio.Event]]:
        events.append("startup")
        yield {"released": released}
        events.append("shutdown")

    async with create_test_server(lifespan=lifespan, mode="loop") as server:

        @server.app.get("/wait")
        async def wait(request: Request) -> dict[str, bool]:
            await request.state.released.wait()
            return {"released": True}

        pending = asyncio.create_task(server.client.get("/wait"))
        await asyncio.sleep(0.05)
        assert not pending.done()  # the handler really waits on the test's event
        released.set()
        assert await (await asyncio.wait_for(pending, timeout=30)).json() == {"released": True}
    assert events == ["startup", "shutdown"]


@pytest.mark.asyncio
async def test_websocket_works_in_loop_mode() -> None:
    async with create_test_server(mode="loop") as server:

        @server.app.websocket("/ws")
        async def shout(websocket: WebSocket) -> None:
            await websocket.accept()
            try:
                while True:
                    await websocket.send_text((await websocket.receive_text()).upper())
            except WebSocketDisconnect:
                pass

        ws = await server.client.websocket("/ws")
        await server.client.ws.send_text(ws, "quiet")
        await server.client.ws.expect_message(ws, "QUIET", timeout=30)


@pytest.mark.asyncio
async def test_start_raises_startup_error_when_lifespan_fails_in_loop_mode() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    fds = _open_fds()
    server = AsyncTestServer(lifespan=lifespan, mode="loop")
    with pytest.raises(ServerStartupError, match=r"\(mode='loop'\) failed to start: lifespan startup raised") as info:
        await server.start()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.port == server.port
    assert not server.is_running
    assert _open_fds() <= fds  # the listening socket is closed


@pytest.mark.asyncio
async def test_start_raises_startup_error_when_startup_hangs_in_loop_mode() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.Event().wait()  # an await that never returns
        yield

    server = AsyncTestServer(lifespan=lifespan, mode="loop", startup_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(ServerStartupError, match=r"was not ready within startup_timeout=0.2s"):
        await server.start()
    assert time.monotonic() - started < 5  # the hung startup was cancelled, not waited out
    assert not server.is_running


@pytest.mark.asyncio
async def test_start_raises_startup_error_when_the_app_cannot_be_imported_in_loop_mode() -> None:
    server = AsyncTestServer("no_such_module_for_loop_mode:app", mode="loop")
    with pytest.raises(ServerStartupError, match="cannot import the app 'no_such_module_for_loop_mode:app'"):
        await server.start()


@pytest.mark.asyncio
async def test_fixed_port_in_use_raises_port_in_use_error_in_loop_mode() -> None:
    async with create_test_server(mode="loop") as first:
        second = AsyncTestServer(mode="loop", port=first.port)
        with pytest.raises(PortInUseError, match="the port is already in use"):
            await second.start()


@pytest.mark.asyncio
async def test_exit_raises_server_exceptions_error_in_loop_mode() -> None:
    server = create_test_server(mode="loop")

    @server.app.get("/boom")
    async def boom() -> None:
        raise LookupError("nothing here")

    async def run() -> None:
        async with server:
            await (await server.client.get("/boom")).expect_status(500)

    with pytest.raises(ServerExceptionsError, match="raised 1 unhandled exception") as info:
        await run()
    assert isinstance(info.value.__cause__, LookupError)


@pytest.mark.asyncio
async def test_health_path_is_awaited_in_loop_mode() -> None:
    server = AsyncTestServer(mode="loop", health_path="/healthz", startup_timeout=3)
    with pytest.raises(ServerStartupError, match=r"health check GET /healthz did not answer 2xx .*404 Not Found"):
        await server.start()

    @server.app.get("/healthz")
    async def healthz() -> str:
        return "ok"

    async with server:
        assert await (await server.client.get("/healthz")).json() == "ok"


@pytest.mark.asyncio
async def test_stop_cuts_an_endless_stream_after_the_shutdown_timeout_in_loop_mode() -> None:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b"tick\n"
            await asyncio.sleep(0.01)

    server = AsyncTestServer(mode="loop", shutdown_timeout=0.3)

    @server.app.get("/forever")
    async def endless() -> StreamingResponse:
        return StreamingResponse(forever())

    await server.start()
    # A client the server does not own, so stop() cannot close it first.
    async with aiohttp.ClientSession() as session, session.get(server.url("/forever")) as response:
        assert await response.content.readline() == b"tick\n"
        await server.stop()
    assert not server.is_running
    assert "Cut 1 request(s) still running after the 0.3s graceful shutdown timeout" in server.log.text


@pytest.mark.asyncio
async def test_stop_forces_the_exit_of_a_lifespan_shutdown_that_never_ends_in_loop_mode() -> None:
    server = AsyncTestServer(shutdown_hangs_app, mode="loop", shutdown_timeout=0.1)
    await server.start()
    await server.stop()  # the forced exit cancels the await, so the task ends: nothing to raise
    assert not server.is_running
    assert "did not stop within shutdown_timeout=0.1s; forcing its exit" in server.log.text


@pytest.mark.asyncio
async def test_repeated_runs_leave_no_sockets_or_tasks_behind() -> None:
    server = AsyncTestServer(mode="loop")

    @server.app.get("/ping")
    async def ping() -> str:
        return "pong"

    async with server:  # warm-up: imports and lazily created objects are not leaks
        await server.client.get("/ping")
    await asyncio.sleep(0)
    fds, tasks = _open_fds(), len(asyncio.all_tasks())
    for _ in range(5):
        async with server:
            assert await (await server.client.get("/ping")).json() == "pong"
    # Closed transports let go of their sockets on a later loop iteration: wait for that, with a deadline.
    deadline = time.monotonic() + 5
    while (_open_fds() > fds or len(asyncio.all_tasks()) > tasks) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert _open_fds() <= fds
    assert len(asyncio.all_tasks()) <= tasks


def test_loop_option_is_refused_in_loop_mode() -> None:
    with pytest.raises(TypeError, match="with mode='loop' the server runs on yours"):
        AsyncTestServer(mode="loop", loop="uvloop")

"""Socket.IO: a socketio.ASGIApp answering FOO with BAR, reached by python-socketio's real clients."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from typing import Any

import pytest
import socketio

from uvicorn_testserver import AsyncServerMode, create_test_server

MODES: list[AsyncServerMode] = ["thread", "loop"]


def _socketio_app() -> Any:
    # A long-poll is held up to ping_interval, and a polling client's disconnect waits for
    # ping_interval + ping_timeout; but a session whose pong is later than ping_timeout is
    # dropped, and shared CI machines stall for seconds. With 8 s a polling test takes 9-14 s.
    sio = socketio.AsyncServer(async_mode="asgi", ping_interval=0.5, ping_timeout=8)

    @sio.on("FOO")
    async def foo(sid: str, data: Any) -> str:
        await sio.emit("BAR", {"echo": data}, to=sid)
        return "ack"

    return socketio.ASGIApp(sio)


def _collect_unreleased_responses() -> None:
    # python-engineio's async polling transport never reads the responses to its POSTs, so
    # aiohttp warns about each unreleased connection when it is garbage-collected, in
    # whichever test that happens. Collect them here, where it is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_async_client_gets_bar_for_foo(mode: AsyncServerMode, transport: str) -> None:
    async with create_test_server(_socketio_app(), mode=mode) as server:
        client = socketio.AsyncClient()
        answers: asyncio.Queue[Any] = asyncio.Queue()
        client.on("BAR", answers.put)
        await client.connect(server.base_url, transports=[transport], wait_timeout=30)
        try:
            assert client.transport() == transport
            assert await client.call("FOO", {"n": 1}, timeout=30) == "ack"
            assert await asyncio.wait_for(answers.get(), timeout=30) == {"echo": {"n": 1}}
        finally:
            await client.disconnect()
            _collect_unreleased_responses()


def _sync_round_trip(url: str) -> Any:
    # websocket-client is not installed, so the sync client uses long-polling (over requests).
    client = socketio.Client()
    answered = threading.Event()
    answers: list[Any] = []

    @client.on("BAR")
    def bar(data: Any) -> None:
        answers.append(data)
        answered.set()

    client.connect(url, transports=["polling"], wait_timeout=30)
    try:
        client.emit("FOO", "from the sync client")
        assert answered.wait(timeout=30), "no BAR within 30 s"
        return answers[0]
    finally:
        client.disconnect()


@pytest.mark.asyncio
async def test_sync_client_gets_bar_for_foo_in_thread_mode() -> None:
    async with create_test_server(_socketio_app()) as server:
        # A blocking client right in the async test: the server answers from its own thread.
        assert _sync_round_trip(server.base_url) == {"echo": "from the sync client"}


@pytest.mark.asyncio
async def test_sync_client_gets_bar_for_foo_in_loop_mode() -> None:
    async with create_test_server(_socketio_app(), mode="loop") as server:
        # In loop mode the server shares this loop, so a blocking client must run in a thread.
        assert await asyncio.to_thread(_sync_round_trip, server.base_url) == {"echo": "from the sync client"}

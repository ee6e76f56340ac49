"""Streaming bodies and server-sent events through AsyncTestClient, against a live server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from fastapi import FastAPI
from starlette.responses import StreamingResponse

from uvicorn_testserver import ClientTimeoutError, ServerSentEvent, create_test_server
from uvicorn_testserver._client.streaming import _LineSplitter


def _streaming_app() -> tuple[FastAPI, list[str]]:
    """An app whose streams wait for GET /release before their second part; it records stream ends."""
    app = FastAPI()
    released = asyncio.Event()
    finished: list[str] = []

    @app.get("/release")
    async def release() -> str:
        released.set()
        return "released"

    @app.get("/two-parts")
    async def two_parts() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first\n"
            await released.wait()
            yield b"second\n"

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/endless")
    async def endless() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"tick\n"
                    await asyncio.sleep(0.01)
            finally:
                finished.append("endless")

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/mixed-line-endings")
    async def mixed_line_endings() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for piece in [b"crlf\r", b"\nlf\ncr\rlast", b" words"]:
                yield piece
                await asyncio.sleep(0.01)  # separate chunks, so the "\r" / "\n" split crosses a boundary

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/events")
    async def events() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b": a comment, often a keep-alive\n\n"
            yield b"data: plain\n\n"
            yield b"event: update\nid: 7\ndata: line one\ndata: line two\n\n"
            yield b'retry: 2500\r\ndata:{"n": 1}\r\n\r\n'  # CRLF, and no space after the colon
            yield b"data: still id 7\n\n"
            yield b"id\ndata\n\n"  # a field without colon: id reset, empty data line
            yield b"data: cut off at the end, never dispatched\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/slow-events")
    async def slow_events() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: now\n\n"
            await released.wait()
            yield b"data: later\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/endless-events")
    async def endless_events() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            n = 0
            try:
                while True:
                    n += 1
                    yield f"id: {n}\ndata: {n}\n\n".encode()
                    await asyncio.sleep(0.01)
            finally:
                finished.append("endless-events")

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/json")
    async def not_events() -> dict[str, str]:
        return {"not": "events"}

    return app, finished


@pytest.mark.asyncio
async def test_stream_gives_each_chunk_before_the_body_ends() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server, server.client.stream("GET", "/two-parts") as response:
        await response.expect_status(200)
        assert response.headers["content-type"].startswith("text/plain")
        # The app is still waiting for /release: this chunk came before the body ended.
        assert await response.read_chunk(timeout=30) == b"first\n"
        await (await server.client.get("/release")).expect_status(200)
        assert await response.read_chunk(timeout=30) == b"second\n"
        assert await response.read_chunk(timeout=30) == b""


@pytest.mark.asyncio
async def test_read_timeout_raises_client_timeout_error_and_the_stream_stays_usable() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server, server.client.stream("GET", "/two-parts") as response:
        assert await response.read_line(timeout=30) == "first"
        expected = r"no line arrived from GET http://\S+/two-parts within 0\.1s; the response is still open"
        with pytest.raises(ClientTimeoutError, match=expected):
            await response.read_line(timeout=0.1)
        await server.client.get("/release")
        assert [line async for line in response.iter_lines(timeout=30)] == ["second"]
        assert await response.read_line() is None


@pytest.mark.asyncio
async def test_iter_lines_splits_crlf_lf_and_cr_across_chunk_boundaries() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server, server.client.stream("GET", "/mixed-line-endings") as response:
        assert [line async for line in response.iter_lines(timeout=30)] == ["crlf", "lf", "cr", "last words"]


def test_line_splitter_holds_a_final_cr_until_it_knows_what_follows() -> None:
    splitter = _LineSplitter()
    assert splitter.feed("a\r") == []
    assert splitter.feed("\nb\r") == ["a"]
    assert splitter.feed("c") == ["b"]
    assert splitter.flush() == ["c"]


@pytest.mark.asyncio
async def test_iter_chunks_and_read_return_the_whole_body() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server:
        await server.client.get("/release")
        async with server.client.stream("GET", "/two-parts") as response:
            assert b"".join([chunk async for chunk in response.iter_chunks(timeout=30)]) == b"first\nsecond\n"
        async with server.client.stream("POST", "/two-parts") as response:
            with pytest.raises(AssertionError, match=r"expected status 200, got 405 Method Not Allowed .*Method Not"):
                await response.expect_status(200)
        async with server.client.stream("GET", "/two-parts", params={"ignored": "1"}) as response:
            assert await response.read(timeout=30) == b"first\nsecond\n"


@pytest.mark.asyncio
async def test_leaving_the_block_closes_an_endless_stream_on_the_server() -> None:
    app, finished = _streaming_app()
    async with create_test_server(app) as server:
        async with server.client.stream("GET", "/endless") as response:
            assert await response.read_line(timeout=30) == "tick"
        deadline = time.monotonic() + 5
        while not finished and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert finished == ["endless"]


@pytest.mark.asyncio
async def test_stop_closes_streams_the_test_left_open() -> None:
    app, finished = _streaming_app()
    server = create_test_server(app, shutdown_timeout=10)
    async with server:
        events = server.client.sse("/endless-events")
        assert (await events.next(timeout=30)).data == "1"
        stream_cm = server.client.stream("GET", "/endless")
        stream = await stream_cm.__aenter__()
        assert await stream.read_line(timeout=30) == "tick"
        started = time.monotonic()
    # Closed by the client before the server stopped: no wait for the 10 s shutdown timeout.
    assert time.monotonic() - started < 5
    assert sorted(finished) == ["endless", "endless-events"]
    await stream_cm.__aexit__(None, None, None)


@pytest.mark.asyncio
async def test_sse_parses_events_as_the_standard_says() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server, server.client.sse("/events") as events:
        assert events.stream.headers["content-type"].startswith("text/event-stream")
        received = [event async for event in events]
    assert received == [
        ServerSentEvent(data="plain"),
        ServerSentEvent(event="update", data="line one\nline two", id="7"),
        ServerSentEvent(data='{"n": 1}', id="7", retry=2500),
        ServerSentEvent(data="still id 7", id="7"),
        ServerSentEvent(data="", id=""),
    ]
    assert received[2].json() == {"n": 1}


@pytest.mark.asyncio
async def test_sse_next_times_out_with_a_clear_error_and_keeps_the_stream() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server, server.client.sse("/slow-events") as events:
        assert (await events.next(timeout=30)).data == "now"
        expected = r"no server-sent event arrived from GET \S+/slow-events within 0\.1s; the response is still open"
        with pytest.raises(ClientTimeoutError, match=expected):
            await events.next(timeout=0.1)
        await server.client.get("/release")
        assert (await events.next(timeout=30)).data == "later"
        with pytest.raises(StopAsyncIteration):
            await events.next(timeout=30)


@pytest.mark.asyncio
async def test_sse_iterated_directly_opens_itself() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server:
        ids = []
        async for event in server.client.sse("/endless-events"):
            ids.append(event.id)
            if len(ids) == 3:
                break
        assert ids == ["1", "2", "3"]


@pytest.mark.asyncio
async def test_sse_of_a_response_that_is_not_an_event_stream_raises_assertion_error() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app) as server:
        expected = (
            r"expected an event stream \(200, text/event-stream\) from GET \S+/json, "
            r"""got 200 OK \(application/json\); body starts: '\{"not":"events"\}'"""
        )
        with pytest.raises(AssertionError, match=expected):
            await server.client.sse("/json").open()
        with pytest.raises(AssertionError, match=r"got 404 Not Found"):
            async with server.client.sse("/missing"):
                pass


@pytest.mark.asyncio
async def test_streams_work_in_loop_mode_too() -> None:
    app, _ = _streaming_app()
    async with create_test_server(app, mode="loop") as server, server.client.sse("/slow-events") as events:
        assert (await events.next(timeout=30)).data == "now"
        await server.client.get("/release")
        assert (await events.next(timeout=30)).data == "later"


@pytest.mark.asyncio
async def test_ndjson_export_is_read_line_by_line() -> None:
    app = FastAPI()

    @app.get("/export")
    async def export() -> StreamingResponse:
        async def rows() -> AsyncIterator[str]:
            for n in range(3):
                yield json.dumps({"row": n}) + "\n"

        return StreamingResponse(rows(), media_type="application/x-ndjson")

    async with create_test_server(app) as server, server.client.stream("GET", "/export") as response:
        await response.expect_status(200)
        rows = [json.loads(line) async for line in response.iter_lines(timeout=30)]
    assert rows == [{"row": 0}, {"row": 1}, {"row": 2}]


@pytest.mark.asyncio
async def test_clock_events_arrive_parsed() -> None:
    app = FastAPI()

    @app.get("/clock")
    async def clock() -> StreamingResponse:
        async def ticks() -> AsyncIterator[str]:
            for n in range(3):
                yield f"event: tick\nid: {n}\ndata: {json.dumps({'n': n})}\n\n"

        return StreamingResponse(ticks(), media_type="text/event-stream")

    async with create_test_server(app) as server, server.client.sse("/clock") as events:
        first = await events.next(timeout=30)
        assert (first.event, first.id, first.json()) == ("tick", "0", {"n": 0})
        assert [event.id async for event in events] == ["1", "2"]

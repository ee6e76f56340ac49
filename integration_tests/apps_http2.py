"""The app of the HTTP/2 tests, importable as ``"apps_http2:app"`` in every mode (a child process too).

``GET /who`` answers ``"<http_version> <client port>"``, so a test sees which protocol and
which connection served each request. ``GET /together?group=G&n=N`` answers only once N
requests of group G are in the app at the same time: N answers over one connection prove
N streams multiplexed on it (HTTP/1.1 serves one request at a time per connection).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

logger = logging.getLogger("uvicorn.error")
_groups: dict[str, asyncio.Barrier] = {}


def _who(request: Request) -> str:
    assert request.client is not None
    return f"{request.scope['http_version']} {request.client.port}"


async def who(request: Request) -> PlainTextResponse:
    return PlainTextResponse(_who(request))


async def together(request: Request) -> PlainTextResponse:
    group, size = request.query_params["group"], int(request.query_params["n"])
    barrier = _groups.setdefault(group, asyncio.Barrier(size))
    async with asyncio.timeout(10):  # a deadline for failures only: the test fails with a 500, never hangs
        await barrier.wait()
    return PlainTextResponse(_who(request))


async def divide(request: Request) -> Response:
    return PlainTextResponse(str(1 / 0))


async def events(request: Request) -> StreamingResponse:
    """Server-sent events: three, a little apart, then the end of the stream."""

    async def stream() -> AsyncIterator[str]:
        for number in range(3):
            yield f"data: event {number}\n\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(stream(), media_type="text/event-stream")


async def endless(request: Request) -> StreamingResponse:
    """A stream that never ends on its own: only a stop can end it."""

    async def stream() -> AsyncIterator[str]:
        logger.warning("endless stream started")
        while True:
            yield "tick\n"
            await asyncio.sleep(0.01)

    return StreamingResponse(stream(), media_type="text/plain")


async def slow(request: Request) -> PlainTextResponse:
    logger.warning("slow request started")
    await asyncio.sleep(0.1)
    return PlainTextResponse(_who(request))


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(f"echo {await websocket.receive_text()} ({websocket.scope['http_version']})")
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/who", who),
        Route("/health", who),
        Route("/together", together),
        Route("/divide", divide),
        Route("/events", events),
        Route("/endless", endless),
        Route("/slow", slow),
        WebSocketRoute("/ws", echo),
    ]
)

"""The demo app served by ``demo_server.py`` and used by the quick-start tests.

Routes: ``GET /health``, ``GET /test``, ``POST /api/data`` (echoes the JSON body,
422 on invalid JSON), ``GET /stream`` (a chunked body), ``GET /events``
(server-sent events) and ``WS /ws/echo``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["app"]


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"message": "OK"})


async def test(request: Request) -> JSONResponse:
    return JSONResponse({"message": "Test endpoint works", "path": request.url.path})


async def echo_data(request: Request) -> JSONResponse:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return JSONResponse({"detail": f"invalid JSON: {exc}"}, status_code=422)
    return JSONResponse({"received": data})


async def stream(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("count", "5"))

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(count):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def events(request: Request) -> StreamingResponse:
    """Server-sent events: `count` ticks, or an endless stream without `count`."""
    count = request.query_params.get("count")

    async def ticks() -> AsyncIterator[str]:
        i = 0
        while count is None or i < int(count):
            yield f"id: {i}\nevent: tick\ndata: {json.dumps({'n': i})}\n\n"
            i += 1
            await asyncio.sleep(0.01)

    return StreamingResponse(ticks(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/test", test),
        Route("/api/data", echo_data, methods=["POST"]),
        Route("/stream", stream),
        Route("/events", events),
        WebSocketRoute("/ws/echo", ws_echo),
    ]
)

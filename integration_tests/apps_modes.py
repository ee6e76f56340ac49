"""Apps for the mode matrix, importable as ``"apps_modes:<name>"`` in every mode (a child process too)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

logger = logging.getLogger("uvicorn.error")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def divide(request: Request) -> Response:
    return PlainTextResponse(str(1 / int(request.query_params.get("by", "0"))))


async def logs(request: Request) -> PlainTextResponse:
    logger.warning("the app logged %s", request.query_params.get("word", "this"))
    return PlainTextResponse("logged")


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for number in range(3):
            yield f"chunk {number}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


async def slow(request: Request) -> PlainTextResponse:
    logger.warning("slow request started")
    await asyncio.sleep(float(request.query_params.get("seconds", "0.5")))
    return PlainTextResponse("slow")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo " + await websocket.receive_text())
    except WebSocketDisconnect:
        pass


ROUTES = [
    Route("/", hello),
    Route("/health", hello),
    Route("/divide", divide),
    Route("/log", logs),
    Route("/stream", stream),
    Route("/slow", slow),
    WebSocketRoute("/ws", echo),
]
app = Starlette(routes=ROUTES)


@asynccontextmanager
async def _hangs(app: Starlette) -> AsyncIterator[None]:
    await asyncio.Event().wait()  # never set: the start hangs until it is cancelled
    yield


startup_hangs_app = Starlette(routes=ROUTES, lifespan=_hangs)


@asynccontextmanager
async def _slow_shutdown(app: Starlette) -> AsyncIterator[None]:
    yield
    await asyncio.sleep(1.0)


slow_shutdown_app = Starlette(routes=ROUTES, lifespan=_slow_shutdown)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A plain WSGI app: ASGI servers must adapt it, never call it as ASGI."""
    body = f"wsgi says {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

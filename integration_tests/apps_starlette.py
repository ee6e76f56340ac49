"""A plain Starlette app for the framework tests: JSON routes with state, a form post, a WebSocket.

`create_app()` builds a fresh app (its store lives in ``app.state``, filled by the
lifespan), so each test gets its own state; as an import string use
``"apps_starlette:create_app"`` with ``factory=True``.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def list_items(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.items)


async def add_item(request: Request) -> JSONResponse:
    item = await request.json()
    items: list[dict[str, object]] = request.app.state.items
    item["id"] = len(items) + 1
    items.append(item)
    return JSONResponse(item, status_code=201)


async def get_item(request: Request) -> JSONResponse:
    for item in request.app.state.items:
        if item["id"] == request.path_params["item_id"]:
            return JSONResponse(item)
    raise HTTPException(404, f"no item {request.path_params['item_id']}")


async def login(request: Request) -> PlainTextResponse:
    # A urlencoded form, parsed by hand: request.form() needs python-multipart, not a dependency here.
    form = urllib.parse.parse_qs((await request.body()).decode())
    return PlainTextResponse(f"welcome {form['user'][0]}")


async def crash(request: Request) -> PlainTextResponse:
    raise ZeroDivisionError("starlette handler divided by zero")


async def shout(websocket: WebSocket) -> None:
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.send_text((await websocket.receive_text()).upper())


def create_app() -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.items = [{"id": 1, "name": "seeded at startup"}]
        yield

    return Starlette(
        routes=[
            Route("/items", list_items),
            Route("/items", add_item, methods=["POST"]),
            Route("/items/{item_id:int}", get_item),
            Route("/login", login, methods=["POST"]),
            Route("/crash", crash),
            WebSocketRoute("/shout", shout),
        ],
        lifespan=lifespan,
    )

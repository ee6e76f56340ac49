"""A tiny single-page app for the browser end-to-end tests.

``GET /`` serves an HTML page whose JavaScript, once loaded, calls ``GET /api/greeting``
and shows the JSON answer in ``#greeting``, then opens a WebSocket to ``/ws`` and shows
the echo of what it sent in ``#echo``. ``GET /broken`` serves the same page pointed at
``/api/broken``, an endpoint that raises, so the page shows the HTTP status instead.
``GET /api/http-version`` answers the ``http_version`` the app saw (``"2"`` over HTTP/2).
The WebSocket URL follows the page's own scheme, so the page works over https/wss too.
"""

from __future__ import annotations

import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>uvicorn-testserver browser demo</title></head>
<body>
  <p id="greeting">loading...</p>
  <p id="echo">connecting...</p>
  <script>
    const api = document.body.dataset.api;
    fetch(api + "?name=browser")
      .then(async (response) => {
        const target = document.getElementById("greeting");
        if (!response.ok) { target.textContent = "API error " + response.status; return; }
        target.textContent = (await response.json()).greeting;
      });
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/ws");
    socket.onopen = () => socket.send("ping from the page");
    socket.onmessage = (event) => { document.getElementById("echo").textContent = event.data; };
    socket.onerror = () => { document.getElementById("echo").textContent = "WebSocket failed"; };
  </script>
</body>
</html>
"""


def _page(api: str) -> HTMLResponse:
    return HTMLResponse(PAGE.replace("<body>", f'<body data-api="{api}">', 1))


async def index(request: Request) -> HTMLResponse:
    return _page("/api/greeting")


async def broken_page(request: Request) -> HTMLResponse:
    return _page("/api/broken")


async def greeting(request: Request) -> JSONResponse:
    return JSONResponse({"greeting": f"Hello, {request.query_params.get('name', 'world')}!"})


async def broken(request: Request) -> JSONResponse:
    raise RuntimeError("the greeting service is down")


async def http_version(request: Request) -> PlainTextResponse:
    return PlainTextResponse(request.scope["http_version"])


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.send_text("echo: " + await websocket.receive_text())


app = Starlette(
    routes=[
        Route("/", index),
        Route("/broken", broken_page),
        Route("/api/greeting", greeting),
        Route("/api/broken", broken),
        Route("/api/http-version", http_version),
        WebSocketRoute("/ws", echo),
    ]
)

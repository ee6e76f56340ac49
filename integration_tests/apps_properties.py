"""The app of the lifecycle property tests (``"apps_properties:app"``, importable in a child process too).

A raw ASGI app, so what it does is exactly what the model in ``test_lifecycle_properties.py`` expects:

* lifespan startup takes `STARTUP_DELAY` seconds, and shutdown `SHUTDOWN_DELAY` (windows for cancellations:
  a stop is still under way for that long after its listening socket closed); each startup completed and each
  shutdown begun is counted in `lifespan_events`, and written as a line to the file named by the environment
  variable ``APPS_PROPERTIES_EVENTS`` if set (from a child process);
* ``GET /`` answers 200 ``hello``;
* ``GET /boom?kind=runtime&token=N`` raises ``RuntimeError("boom N")`` before answering (``kind=value``:
  ``ValueError``), so the client gets uvicorn's 500 and the harness records the error;
* ``GET /stream`` sends `STREAM_CHUNKS` chunks of 1 KiB, `STREAM_PAUSE` seconds apart (about 0.2 s in all);
  a client that leaves early is no error (uvicorn drops what is sent after a disconnect);
* ``WS /ws`` echoes text messages (``"echo " + text``) until the client closes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

STARTUP_DELAY = 0.02
SHUTDOWN_DELAY = 0.05
#: How many lifespan startups completed and shutdowns began, in this process (a test times cancellations by them).
lifespan_events = {"startup": 0, "shutdown": 0}
EVENTS_FILE = os.environ.get("APPS_PROPERTIES_EVENTS")
STREAM_CHUNKS = 40
STREAM_PAUSE = 0.005


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "websocket":
        await _echo(receive, send)
    else:
        await _http(scope, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await asyncio.sleep(STARTUP_DELAY)
            _happened("startup")
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            _happened("shutdown")
            await asyncio.sleep(SHUTDOWN_DELAY)
            await send({"type": "lifespan.shutdown.complete"})
            return


def _happened(event: str) -> None:
    lifespan_events[event] += 1
    if EVENTS_FILE is not None:
        with open(EVENTS_FILE, "a") as events:
            events.write(event + "\n")


async def _http(scope: Scope, send: Send) -> None:
    path = scope["path"]
    if path == "/boom":
        query = parse_qs(scope.get("query_string", b"").decode())
        token = query.get("token", ["?"])[0]
        kind = ValueError if query.get("kind", ["runtime"])[0] == "value" else RuntimeError
        raise kind(f"boom {token}")
    if path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for number in range(STREAM_CHUNKS):
            await send({"type": "http.response.body", "body": b"%04d" % number + b"." * 1020, "more_body": True})
            await asyncio.sleep(STREAM_PAUSE)
        await send({"type": "http.response.body", "body": b""})
        return
    body = b"hello" if path == "/" else b"not found"
    status = 200 if path == "/" else 404
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _echo(receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": "echo " + message["text"]})

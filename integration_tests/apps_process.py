"""Apps for process mode, importable by the child as ``"apps_process:<name>"``.

The child gets the test process's ``sys.path``, so this module (next to the tests)
imports there too. Behaviour is steered by environment variables passed with ``env=``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

#: Module state: each child process starts with its own.
hits = 0


async def whoami(request: Request) -> JSONResponse:
    global hits
    hits += 1
    return JSONResponse(
        {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "sid": os.getsid(0),
            "hits": hits,
            "cwd": os.getcwd(),
            "greeting": os.environ.get("APP_GREETING"),
        }
    )


async def environ(request: Request) -> JSONResponse:
    return JSONResponse({"environ": dict(os.environ), "sys_path": sys.path})


async def boom(request: Request) -> PlainTextResponse:
    raise ValueError("the child's handler broke")


async def block(request: Request) -> PlainTextResponse:
    time.sleep(float(request.query_params.get("seconds", "0.2")))  # on purpose: blocks the child's event loop
    return PlainTextResponse("blocked")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.send_text(await websocket.receive_text())


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    print(f"child {os.getpid()} starting", flush=True)
    yield
    marker = os.environ.get("APP_SHUTDOWN_MARKER")
    if marker:
        Path(marker).write_text(f"lifespan shutdown ran in {os.getpid()}")  # noqa: ASYNC240 - tiny, at shutdown


ROUTES = [
    Route("/", whoami),
    Route("/environ", environ),
    Route("/boom", boom),
    Route("/block", block),
    WebSocketRoute("/ws", echo),
]
app = Starlette(routes=ROUTES, lifespan=lifespan)


def create_app() -> Starlette:
    """An app factory (``factory=True``)."""
    return Starlette(routes=[Route("/", whoami)], lifespan=lifespan)


@contextlib.asynccontextmanager
async def _failing_lifespan(app: Starlette) -> AsyncIterator[None]:
    print("connecting to the database...", flush=True)
    raise RuntimeError("no database in the child")
    yield  # pragma: no cover


lifespan_fails_app = Starlette(routes=ROUTES, lifespan=_failing_lifespan)


@contextlib.asynccontextmanager
async def _hanging_lifespan(app: Starlette) -> AsyncIterator[None]:
    await asyncio.Event().wait()
    yield  # pragma: no cover


startup_hangs_app = Starlette(routes=ROUTES, lifespan=_hanging_lifespan)


@contextlib.asynccontextmanager
async def _blocking_shutdown(app: Starlette) -> AsyncIterator[None]:
    yield
    time.sleep(30)  # on purpose: a lifespan shutdown that blocks the event loop


shutdown_blocks_app = Starlette(routes=ROUTES, lifespan=_blocking_shutdown)


@contextlib.asynccontextmanager
async def _stubborn_shutdown(app: Starlette) -> AsyncIterator[None]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    yield
    print("stuck in a regular expression", flush=True)
    # Catastrophic backtracking: the match runs in C for ages and never releases the GIL,
    # so even the child's watchdog thread cannot run. Only SIGKILL ends this process.
    re.match(r"(a+)+$", "a" * 64 + "b")


ignores_sigterm_app = Starlette(routes=ROUTES, lifespan=_stubborn_shutdown)


def crash_on_request(request: Request) -> None:
    sys.stdout.write("crashing hard\n")
    sys.stdout.flush()
    os._exit(9)


async def _crash(request: Request) -> PlainTextResponse:
    crash_on_request(request)
    return PlainTextResponse("unreachable")  # pragma: no cover


crashes_app = Starlette(routes=[Route("/crash", _crash), *ROUTES])

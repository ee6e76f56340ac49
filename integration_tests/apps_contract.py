"""Apps for the lifecycle contract's regression tests, importable as ``"apps_contract:<name>"`` in every mode.

`LIFESPAN_RECORD`, if set in the environment, names a file each lifespan event is
appended to (a child process's events reach the test that way); in the test's own
process they are also kept in `events`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

events: list[str] = []

not_an_app = 42  # an import string may name it; it is not an application


def record(event: str) -> None:
    events.append(event)
    path = os.environ.get("LIFESPAN_RECORD")
    if path:
        with open(path, "a") as file:
            file.write(event + "\n")


@asynccontextmanager
async def _recorded(app: Starlette) -> AsyncIterator[None]:
    record("startup")
    yield
    # Under uvicorn's signal handling (process mode), the handler is bound to the uvicorn Server it stops.
    server = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    captured = getattr(server, "_captured_signals", None)
    record(f"shutdown signals={[signal.Signals(number).name for number in captured or []]}")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def boom(request: Request) -> Response:
    if request.query_params.get("raise", "1") == "1":
        raise RuntimeError("the handler broke on purpose")
    return PlainTextResponse("fine")


async def slow(request: Request) -> PlainTextResponse:
    await asyncio.sleep(0.3)
    record("slow request done")
    return PlainTextResponse("slept")


async def sse(request: Request) -> EventSourceResponse:
    async def ticks() -> AsyncIterator[dict[str, str]]:
        number = 0
        while True:  # an endless stream: only the server's shutdown ends it
            yield {"data": f"tick {number}"}
            number += 1
            await asyncio.sleep(0.05)

    return EventSourceResponse(ticks())


app = Starlette(
    routes=[Route("/", hello), Route("/boom", boom), Route("/slow", slow), Route("/sse", sse)],
    lifespan=_recorded,
)


@asynccontextmanager
async def _slow_startup(app: Starlette) -> AsyncIterator[None]:
    record("startup begins")
    await asyncio.sleep(0.05)
    record("startup")
    yield
    record("shutdown")


slow_startup_app = Starlette(routes=[Route("/", hello)], lifespan=_slow_startup)


async def _hanging(request: Request) -> PlainTextResponse:
    await asyncio.sleep(60)  # a health check that never answers: only a stop ends it
    return PlainTextResponse("late")


hanging_health_app = Starlette(routes=[Route("/", hello), Route("/health", _hanging)])


async def _unhealthy(request: Request) -> PlainTextResponse:
    return PlainTextResponse("not yet", status_code=503)


@asynccontextmanager
async def _slow_shutdown(app: Starlette) -> AsyncIterator[None]:
    record("startup")
    yield
    record("shutdown begins")
    await asyncio.sleep(1)
    record("shutdown")


unhealthy_slow_shutdown_app = Starlette(routes=[Route("/health", _unhealthy)], lifespan=_slow_shutdown)


@asynccontextmanager
async def _blocking_shutdown(app: Starlette) -> AsyncIterator[None]:
    yield
    record("shutdown blocks")
    time.sleep(4.5)  # blocks the server's loop past the forced exit: the stop gives up on it


blocking_shutdown_app = Starlette(routes=[Route("/", hello)], lifespan=_blocking_shutdown)

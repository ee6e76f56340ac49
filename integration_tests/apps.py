"""Small ASGI apps and resource probes shared by the thread-harness tests.

Apps that a test needs to observe are built by factories that take `threading.Event`s:
the app runs in the server's thread, the test waits on the event with a deadline.
Module-level apps exist for import strings (``f"{__name__}:name"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

#: Import-string prefix of this module, right whether pytest imports it as ``apps`` or as a package member.
HERE = __name__

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


async def wait_event(event: threading.Event, timeout: float = 10.0) -> None:
    """Wait in the server's loop for an event the test sets; raise `TimeoutError` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not event.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test did not set the event within {timeout}s")
        await asyncio.sleep(0.002)


# -- a plain app ---------------------------------------------------------------------------


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def _fail(request: Request) -> Response:
    raise ValueError("the handler broke on purpose")


hello_app = Starlette(routes=[Route("/", _hello), Route("/fail", _fail)])
"""``GET /`` answers ``hello``; ``GET /fail`` raises `ValueError`."""


# -- lifespan ------------------------------------------------------------------------------


@dataclass
class Flags:
    """What an app's lifespan and handlers did, set from the server thread."""

    started: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hits: int = 0


def lifespan_app(
    flags: Flags,
    *,
    startup_delay: float = 0.0,
    startup_gate: threading.Event | None = None,
    shutdown_gate: threading.Event | None = None,
) -> Starlette:
    """Sets `flags.started` at the end of startup and `flags.stopped` at the end of shutdown.

    Startup first sleeps `startup_delay` and waits for `startup_gate`; shutdown waits for `shutdown_gate`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.sleep(startup_delay)
        if startup_gate is not None:
            await wait_event(startup_gate)
        flags.started.set()
        yield
        if shutdown_gate is not None:
            await wait_event(shutdown_gate)
        flags.stopped.set()

    return Starlette(routes=[Route("/", _hello)], lifespan=lifespan)


@contextlib.asynccontextmanager
async def _failing_lifespan(app: Starlette) -> AsyncIterator[None]:
    _connect_to_database()
    yield  # pragma: no cover


def _connect_to_database() -> None:
    raise RuntimeError("database unreachable")


lifespan_fails_app = Starlette(routes=[Route("/", _hello)], lifespan=_failing_lifespan)
"""Lifespan startup raises ``RuntimeError('database unreachable')``."""


@contextlib.asynccontextmanager
async def _shutdown_fails(app: Starlette) -> AsyncIterator[None]:
    yield
    raise RuntimeError("could not flush the queue")


shutdown_fails_app = Starlette(routes=[Route("/", _hello)], lifespan=_shutdown_fails)
"""Lifespan shutdown raises ``RuntimeError('could not flush the queue')``."""


async def startup_failed_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A raw ASGI app that reports ``lifespan.startup.failed`` with a message, without raising."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the cache warm-up found no redis at :6379"})
        return
    raise AssertionError("never serves")  # pragma: no cover


async def startup_hangs_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A raw ASGI app whose lifespan startup never completes."""
    if scope["type"] == "lifespan":
        await receive()
        await asyncio.Event().wait()
    raise AssertionError("never serves")  # pragma: no cover


def slow_event_loop() -> asyncio.AbstractEventLoop:
    """A loop factory (``loop="apps:slow_event_loop"``) that takes a second, like a loaded machine."""
    time.sleep(1.0)
    return asyncio.new_event_loop()


@contextlib.asynccontextmanager
async def _hangs_at_shutdown(app: Starlette) -> AsyncIterator[None]:
    yield
    await asyncio.Event().wait()  # never set: only a forced exit ends it


shutdown_hangs_app = Starlette(lifespan=_hangs_at_shutdown)
"""An app whose lifespan shutdown awaits something that never happens (without blocking the loop)."""


def health_app(flags: Flags, *, failures: int) -> Starlette:
    """``GET /health`` answers 503 the first `failures` times, then 200; `flags.hits` counts calls."""

    async def health(request: Request) -> PlainTextResponse:
        flags.hits += 1
        if flags.hits <= failures:
            return PlainTextResponse("warming up", status_code=503)
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/health", health)])


# -- requests that take time ---------------------------------------------------------------


def slow_app(flags: Flags, *, seconds: float) -> Starlette:
    """``GET /slow`` sets `flags.entered`, awaits `seconds`, sets `flags.finished`, answers ``done``.

    ``GET /block`` sets `flags.entered` and then blocks the event loop until `flags.release`
    is set, `seconds` at most.
    """

    async def slow(request: Request) -> PlainTextResponse:
        flags.entered.set()
        await asyncio.sleep(seconds)
        flags.finished.set()
        return PlainTextResponse("done")

    async def block(request: Request) -> PlainTextResponse:
        flags.entered.set()
        flags.release.wait(seconds)  # on purpose: a handler that blocks the loop
        return PlainTextResponse("blocked")

    return Starlette(routes=[Route("/slow", slow), Route("/block", block)])


def gated_stream_app(flags: Flags) -> Starlette:
    """``GET /stream`` sends ``first``, waits for `flags.release`, then sends ``second``."""

    async def stream(request: Request) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            yield b"first\n"
            await wait_event(flags.release)
            yield b"second\n"

        return StreamingResponse(body(), media_type="text/plain")

    return Starlette(routes=[Route("/stream", stream)])


async def _ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.send_text(await websocket.receive_text())


ws_app = Starlette(routes=[WebSocketRoute("/ws", _ws_echo)])
"""``WS /ws`` echoes text."""


# -- resource probes -----------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie not yet collected counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def server_threads(port: int) -> list[threading.Thread]:
    """Live harness threads serving `port` (other tests' session servers may be running too)."""
    return [t for t in threading.enumerate() if t.name.startswith("uvicorn-testserver") and t.name.endswith(f":{port}")]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a new server socket can bind and listen on `port`, as a restarted server would."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen()
        except OSError:
            return False
        return True


@dataclass
class Baseline:
    """Thread and fd counts taken before an action, compared after it."""

    threads: set[threading.Thread] = field(default_factory=lambda: set(threading.enumerate()))
    fds: int = field(default_factory=fd_count)

    def extra_threads(self) -> list[str]:
        return sorted(t.name for t in set(threading.enumerate()) - self.threads)

    def assert_restored(self, wait: float = 0.0) -> None:
        """Assert threads and fds are back to the baseline, allowing `wait` s for closes still in flight."""
        end = time.monotonic() + wait
        while (self.extra_threads() or fd_count() > self.fds) and time.monotonic() < end:
            time.sleep(0.005)
        assert self.extra_threads() == [], f"threads left behind: {self.extra_threads()}"
        assert fd_count() <= self.fds, f"{fd_count() - self.fds} file descriptor(s) left open"


@contextlib.contextmanager
def restored_resources() -> Iterator[Baseline]:
    """Take a `Baseline`, run the block, assert threads and fds are back to it."""
    baseline = Baseline()
    yield baseline
    baseline.assert_restored()

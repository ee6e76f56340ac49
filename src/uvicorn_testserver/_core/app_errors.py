"""What the harness wraps around the app: it records the app's unhandled exceptions (and what it was
serving), knows which requests are in flight, keeps a connection usable after an error raised once the
response went out in full, and says why a WebSocket opened over HTTP/2 fails. Plain ASGI: nothing here depends
on uvicorn's internals."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from uvicorn_testserver._core.logs import harness_logger

__all__ = ["AppErrorRecorder", "AppErrorSink", "InFlight", "ResponseWatch"]

#: Where the app's unhandled exceptions go: the exception, and what it was serving ("GET /divide").
AppErrorSink = Callable[[BaseException, str], None]


@dataclass(frozen=True)
class InFlight:
    """A request (or WebSocket) the app is handling."""

    method: str  # the HTTP method, or "WebSocket"
    path: str
    started: float  # time.monotonic()

    def describe(self, now: float) -> str:
        return f"{self.method} {self.path} (running {now - self.started:.1f}s)"


class AppErrorRecorder:
    """ASGI middleware that reports unhandled app exceptions and re-raises them untouched.

    It also knows which requests are in flight, and ends the ones the harness cuts at
    shutdown quietly (their connection is gone, so uvicorn logs no error for them). On the
    lifespan scope it keeps the message of a ``lifespan.startup.failed`` event: uvicorn
    only logs it, then exits.
    """

    def __init__(self, app: Any, on_error: AppErrorSink) -> None:
        self.app = app
        self.on_error = on_error
        self.lifespan_error: BaseException | None = None
        self.startup_failure: str | None = None
        self.in_flight: dict[asyncio.Task[Any] | None, InFlight] = {}
        self.cut: set[asyncio.Task[Any]] = set()
        self._told_websocket_over_http2 = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            try:
                await self.app(scope, receive, self._watch_lifespan(send))
            except Exception as exc:
                self.lifespan_error = exc
                raise
            return
        task = asyncio.current_task()
        method = scope.get("method", "WebSocket") if scope["type"] == "http" else "WebSocket"
        if method == "CONNECT" and not self._told_websocket_over_http2 and _websocket_over_http2(scope):
            self._told_websocket_over_http2 = True
            harness_logger.warning(
                "A client opened a WebSocket over HTTP/2 (CONNECT %s with :protocol websocket, RFC 8441), as browsers "
                "do when the server offers it, and zttp does; uvicorn serves WebSockets over HTTP/1.1 only, so the app "
                "got an HTTP CONNECT request and the client's WebSocket fails. Serve a page that opens WebSockets "
                "from a server without http2=True.",
                scope.get("path", ""),
            )
        self.in_flight[task] = InFlight(method, scope.get("path", ""), time.monotonic())
        response = ResponseWatch(send)
        try:
            await self.app(scope, receive, response.send if scope["type"] == "http" else send)
        except asyncio.CancelledError:
            if task is not None and task in self.cut:
                task.uncancel()
                return  # cut by the harness: said once in the log, not an app error
            raise
        except Exception as exc:
            self.on_error(exc, f"{method} {scope.get('path', '')}")
            if not response.complete:
                raise
            # The app answered in full (a framework's own 500), then re-raised. uvicorn would log it and close
            # the keep-alive connection under a client that has no reason to expect it, failing the client's
            # next request at random; the same line is logged here and the connection stays usable.
            logging.getLogger("uvicorn.error").error("Exception in ASGI application\n", exc_info=exc)
        finally:
            self.in_flight.pop(task, None)

    def _watch_lifespan(self, send: Any) -> Callable[[Any], Awaitable[None]]:
        async def watched(message: Any) -> None:
            if message.get("type") == "lifespan.startup.failed":
                self.startup_failure = str(message.get("message") or "").strip()
            await send(message)

        return watched


def _websocket_over_http2(scope: Any) -> bool:
    return scope.get("http_version") == "2" and any(name == b"sec-websocket-version" for name, _ in scope["headers"])


class ResponseWatch:
    """Watches what an HTTP handler sends: `complete` once the last body message went out."""

    __slots__ = ("_send", "complete")

    def __init__(self, send: Callable[[Any], Awaitable[None]]) -> None:
        self._send = send
        self.complete = False

    async def send(self, message: Any) -> None:
        await self._send(message)
        if message.get("type") == "http.response.body" and not message.get("more_body", False):
            self.complete = True

"""The async test client: aiohttp underneath, the keyword arguments of httpx on top.

`AsyncTestClient` sends requests to one base URL and returns `AsyncTestResponse`
objects whose body is already read; `stream()` and `sse()` read bodies as they
arrive; `websocket()` opens WebSockets that `WebSocketHelper` (``client.ws``) reads
and writes. The client owns one ``aiohttp.ClientSession``, created on first use inside
the running event loop, and `close()` closes it with every WebSocket and stream it
opened. Every read waits at most a timeout and then raises `ClientTimeoutError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
from multidict import CIMultiDict

from uvicorn_testserver._client.response import DEFAULT_TIMEOUT, AsyncTestResponse
from uvicorn_testserver._client.streaming import AsyncTestStream, EventStream
from uvicorn_testserver._client.websocket import WebSocketConfig, WebSocketHelper
from uvicorn_testserver._core.errors import ClientTimeoutError, ServerStateError

if TYPE_CHECKING:
    import ssl as ssl_module

__all__ = ["AsyncTestClient", "translate_request_options"]

# Closing WebSockets at client close: a peer that never answers the close frame is cut after this.
_CLOSE_GRACE = 2.0


# httpx names with no aiohttp counterpart, and what to do instead.
_NO_COUNTERPART = {
    "files": "pass data=aiohttp.FormData() and add_field(name, value, filename=...) for each file",
    "extensions": "aiohttp has no request extensions",
}


def translate_request_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Turn httpx-style keyword arguments into aiohttp ones; aiohttp's own names pass through.

    ``content`` becomes ``data``, ``follow_redirects`` becomes ``allow_redirects``, a
    number of seconds for ``timeout`` becomes ``aiohttp.ClientTimeout(total=...)`` and
    an ``auth`` tuple becomes a Basic ``Authorization`` header (UTF-8, as httpx sends
    it). Raises `TypeError` for a conflicting pair or an httpx option aiohttp cannot
    express.
    """
    result = dict(options)
    for name, hint in _NO_COUNTERPART.items():
        if name in result:
            raise TypeError(f"the aiohttp-based test client has no {name}= option: {hint}.")
    if "content" in result:
        if "data" in result:
            raise TypeError("pass either content= or data=, not both: each is the whole request body.")
        result["data"] = result.pop("content")
    if "follow_redirects" in result:
        if "allow_redirects" in result:
            raise TypeError("pass either follow_redirects= (httpx) or allow_redirects= (aiohttp), not both.")
        result["allow_redirects"] = result.pop("follow_redirects")
    if "timeout" in result:
        result["timeout"] = _client_timeout(result["timeout"])
    auth = result.get("auth")
    if isinstance(auth, tuple):
        # By hand: aiohttp 3.14 deprecates BasicAuth, and older releases lack encode_basic_auth().
        user, password = auth
        headers = CIMultiDict(result.get("headers") or {})
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        result["headers"], result["auth"] = headers, None
    return result


def _client_timeout(value: object) -> aiohttp.ClientTimeout:
    if isinstance(value, aiohttp.ClientTimeout):
        return value
    if value is None:
        return aiohttp.ClientTimeout()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return aiohttp.ClientTimeout(total=float(value))
    raise TypeError(
        f"timeout must be a number of seconds, None or an aiohttp.ClientTimeout, not {type(value).__name__}."
    )


class AsyncTestClient:
    """An aiohttp-based HTTP and WebSocket client for one server, for async tests.

    Paths are joined to `base_url` (absolute URLs are used as they are). Request
    methods take httpx-style keyword arguments (``json``, ``params``, ``headers``,
    ``content``, ``data``, ``cookies``, ``follow_redirects``, ``timeout`` in seconds,
    ``auth`` as a tuple) or aiohttp's own (``allow_redirects``,
    ``timeout=aiohttp.ClientTimeout(...)``, ...), read the whole body and return an
    `AsyncTestResponse`. A request that does not complete within `timeout` raises
    `ClientTimeoutError`. Cookies the server sets are kept, also for ``127.0.0.1``.
    `ssl` is the `ssl.SSLContext` that verifies an HTTPS server (the test server's
    `ssl_context` with ``ssl=True``).

    The client is bound to the event loop it is first used in. `close()` (which the
    server's stop calls) closes every WebSocket and stream it opened and its session;
    using it after that raises `ServerStateError`.
    """

    __test__ = False

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.ssl = ssl
        self.ws = WebSocketHelper()
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._websockets: list[aiohttp.ClientWebSocketResponse] = []
        self._streams: set[aiohttp.ClientResponse] = set()
        self._event_streams: set[EventStream] = set()

    def __repr__(self) -> str:
        return f"<AsyncTestClient {self.base_url}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        """True once `close()` has run."""
        return self._closed

    def url(self, path: str) -> str:
        """The absolute URL of `path`."""
        if re.match(r"(?i)(https?|wss?)://", path):
            return path
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ServerStateError(
                f"{self!r} is closed: its server stopped or close() was called. "
                "Use the client of the running server (server.client)."
            )
        loop = asyncio.get_running_loop()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self._headers,
                cookie_jar=aiohttp.CookieJar(unsafe=True),  # the default jar drops cookies of IP hosts
                connector=aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None,
            )
            self._loop = loop
        elif loop is not self._loop:
            raise ServerStateError(
                f"{self!r} was first used in another event loop, and an aiohttp session belongs to one loop. "
                "Start the server in the event loop the test runs in (check your fixture's loop scope)."
            )
        return self._session

    def _request_timeout(self, options: Mapping[str, Any]) -> float | None:
        timeout = options.get("timeout")
        return timeout.total if isinstance(timeout, aiohttp.ClientTimeout) else self.timeout

    async def request(self, method: str, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send a request and read the whole response; see the class docstring for the arguments."""
        session = self._get_session()
        options = translate_request_options(kwargs)
        url = self.url(path)
        method = method.upper()
        try:
            async with session.request(method, url, **options) as response:
                body = await response.read()
        except TimeoutError as exc:
            raise ClientTimeoutError(
                f"{method} {url} did not complete within timeout={self._request_timeout(options)}s: the app did "
                "not answer, or not completely. Pass a larger timeout= if it is just slow."
            ) from exc
        return AsyncTestResponse(method, url, response=response, body=body)

    async def get(self, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send a GET request."""
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send a POST request."""
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send a PUT request."""
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send a PATCH request."""
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send a DELETE request."""
        return await self.request("DELETE", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send a HEAD request."""
        return await self.request("HEAD", path, **kwargs)

    async def options(self, path: str, **kwargs: Any) -> AsyncTestResponse:
        """Send an OPTIONS request."""
        return await self.request("OPTIONS", path, **kwargs)

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, method: str, path: str, kwargs: Mapping[str, Any], *, encoding: str | None = None
    ) -> AsyncIterator[AsyncTestStream]:
        session = self._get_session()
        options = translate_request_options(kwargs)
        # Without a timeout= of the caller's, only connecting is bounded: each read has its own timeout.
        options.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=self.timeout))
        url = self.url(path)
        method = method.upper()
        try:
            response = await session.request(method, url, **options)
        except TimeoutError as exc:
            raise ClientTimeoutError(
                f"{method} {url} sent no response headers within timeout={self.timeout}s."
            ) from exc
        self._streams.add(response)
        try:
            yield AsyncTestStream(method, url, response, read_timeout=self.timeout, encoding=encoding)
        finally:
            self._streams.discard(response)
            response.close()

    def stream(self, method: str, path: str, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[AsyncTestStream]:
        """Send a request and give its body as it arrives: ``async with client.stream("GET", path) as response``.

        Enters once the status and headers are in; the response is closed when the
        block ends. The keyword arguments are those of `request`; a ``timeout=`` here
        bounds the whole exchange, while each read has its own timeout.
        """
        return self._open_stream(method, path, kwargs)

    def sse(self, path: str, **kwargs: Any) -> EventStream:
        """Open ``GET path`` as a stream of server-sent events; see `EventStream`."""
        self._get_session()  # fail now, not at the first event, if the client is closed
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **kwargs.pop("headers", {})}
        options = {**kwargs, "headers": headers}
        return EventStream(path, lambda: self._open_stream("GET", path, options, encoding="utf-8"), self._event_streams)

    async def websocket(
        self, path: str, config: WebSocketConfig | None = None, options: Mapping[str, Any] | None = None
    ) -> AsyncTestResponse:
        """Open a WebSocket and return it as an `AsyncTestResponse`; read and write it with ``client.ws``.

        `config` maps onto aiohttp's ``ws_connect`` (see `WebSocketConfig`); `options`
        are further ``ws_connect`` keyword arguments and win over `config`. Raises
        `ClientTimeoutError` if the handshake takes longer than ``config.timeout`` and
        ``aiohttp.WSServerHandshakeError`` if the server refuses it (a missing route
        answers 403 or 404). The WebSocket is closed when the client closes, if not before.
        """
        session = self._get_session()
        config = config or WebSocketConfig()
        connect_options = {**config.ws_connect_options(), **(options or {})}
        url = self.url(path)
        try:
            async with asyncio.timeout(config.timeout):
                websocket = await session.ws_connect(url, **connect_options)
        except TimeoutError as exc:
            raise ClientTimeoutError(
                f"the WebSocket handshake with {url} did not complete within timeout={config.timeout}s. "
                "Check that the route accepts the connection (websocket.accept())."
            ) from exc
        except aiohttp.WSServerHandshakeError as exc:
            exc.add_note(
                f"the server refused the WebSocket handshake at {url} with {exc.status}: the route may not exist, "
                "may not be a WebSocket route, or closed the connection before accepting it."
            )
            raise
        self._websockets.append(websocket)
        return AsyncTestResponse("GET", url, websocket=websocket, receive_timeout=config.timeout)

    async def close(self) -> None:
        """Close every WebSocket and stream this client opened, then its session. Idempotent.

        A WebSocket whose peer does not answer the close frame within two seconds is cut.
        """
        if self._closed:
            return
        self._closed = True
        websockets, self._websockets = self._websockets, []
        open_ones = [ws for ws in websockets if not ws.closed]
        if open_ones:
            await asyncio.wait([asyncio.ensure_future(ws.close()) for ws in open_ones], timeout=_CLOSE_GRACE)
        for events in list(self._event_streams):
            await events.close()
        for response in list(self._streams):
            response.close()
        self._streams.clear()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

"""`AsyncTestResponse`: an HTTP response with its body read, or an open WebSocket."""

from __future__ import annotations

import codecs
import json as jsonlib
from typing import Any, Self

import aiohttp
from multidict import CIMultiDictProxy

from uvicorn_testserver._core.errors import InvalidResponseTypeError

__all__ = ["DEFAULT_TIMEOUT", "AsyncTestResponse", "body_preview", "charset_of"]

#: Seconds a request, a WebSocket handshake or a read waits by default.
DEFAULT_TIMEOUT = 30.0
_PREVIEW_CHARS = 500


def body_preview(body: bytes, encoding: str = "utf-8") -> str:
    """The start of `body` as text, for error messages."""
    text = body[: _PREVIEW_CHARS * 4].decode(encoding, errors="replace")
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "..."


def charset_of(response: aiohttp.ClientResponse) -> str:
    """The charset of the response's Content-Type if Python knows it, else UTF-8."""
    charset = response.charset or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        return "utf-8"
    return charset


class AsyncTestResponse:
    """What a request or `AsyncTestClient.websocket` returned: an HTTP response or an open WebSocket.

    An HTTP response holds its whole body: ``status_code``, ``headers``, ``content``,
    ``await json()``, ``await text()``, ``await expect_status(code)``. A WebSocket one
    gives its ``aiohttp.ClientWebSocketResponse`` through ``websocket()``. Using an
    HTTP-only member on a WebSocket, or ``websocket()`` on an HTTP response, raises
    `InvalidResponseTypeError`.
    """

    __test__ = False

    def __init__(
        self,
        method: str,
        url: str,
        *,
        response: aiohttp.ClientResponse | None = None,
        body: bytes = b"",
        websocket: aiohttp.ClientWebSocketResponse | None = None,
        receive_timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        if (response is None) == (websocket is None):
            raise TypeError("an AsyncTestResponse wraps either an HTTP response or a WebSocket.")
        self.method = method
        self.url = url
        self._response = response
        self._body = body
        self._websocket = websocket
        self.receive_timeout = receive_timeout

    @property
    def is_websocket(self) -> bool:
        """True for a WebSocket opened by `AsyncTestClient.websocket`."""
        return self._websocket is not None

    def __repr__(self) -> str:
        if self._websocket is not None:
            state = "closed" if self._websocket.closed else "open"
            return f"<AsyncTestResponse WebSocket {self.url} {state}>"
        return f"<AsyncTestResponse {self.method} {self.url} {self.status_code}>"

    def _http(self, member: str) -> aiohttp.ClientResponse:
        if self._response is None:
            raise InvalidResponseTypeError(
                f"{member} is for HTTP responses, and this is the WebSocket {self.url}: WebSocket connections "
                "don't have status codes, headers or a body once open. Use client.ws.receive_json(ws) and the "
                "other client.ws helpers, or response.websocket()."
            )
        return self._response

    @property
    def status_code(self) -> int:
        """The HTTP status code."""
        return self._http("status_code").status

    @property
    def reason(self) -> str:
        """The HTTP reason phrase, such as ``"Not Found"``."""
        return self._http("reason").reason or ""

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The response headers (case-insensitive; repeated headers kept, see ``getall``)."""
        return self._http("headers").headers

    @property
    def content(self) -> bytes:
        """The whole response body."""
        self._http("content")
        return self._body

    async def text(self) -> str:
        """The body decoded with the charset of its Content-Type (UTF-8 if none); bad bytes become U+FFFD."""
        if self._response is None:
            raise InvalidResponseTypeError(
                f"Cannot get text directly from WebSocket response {self.url}: "
                "read a message with client.ws.receive_text(ws)."
            )
        return self._body.decode(charset_of(self._response), errors="replace")

    async def json(self) -> Any:
        """The body parsed as JSON, whatever the Content-Type; `ValueError` with the body start if it is not JSON."""
        if self._response is None:
            raise InvalidResponseTypeError(
                f"Cannot get JSON directly from WebSocket response {self.url}: "
                "read a message with client.ws.receive_json(ws)."
            )
        try:
            return jsonlib.loads(self._body)
        except ValueError as exc:
            exc.add_note(
                f"{self.method} {self.url} answered {self.status_code} {self.reason} "
                f"with a body that is not JSON: {body_preview(self._body)!r}"
            )
            raise

    async def expect_status(self, status_code: int) -> Self:
        """Return this response if its status is `status_code`; else raise `AssertionError`.

        The message shows the expected and the actual status and the start of the body.
        """
        actual = self._http("expect_status()").status
        if actual != status_code:
            raise AssertionError(
                f"expected status {status_code}, got {actual} {self.reason} from {self.method} {self.url}; "
                f"body starts: {body_preview(self._body)!r}"
            )
        return self

    def websocket(self) -> aiohttp.ClientWebSocketResponse:
        """The open ``aiohttp.ClientWebSocketResponse`` (``close()``, ``protocol``, ``receive()``, ...)."""
        if self._websocket is None:
            raise InvalidResponseTypeError(
                f"This response is not a WebSocket connection: {self.method} {self.url} answered "
                f"{self.status_code}. Open one with client.websocket(path)."
            )
        return self._websocket

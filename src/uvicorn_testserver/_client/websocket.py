"""WebSockets of the async test client: `WebSocketConfig` and `WebSocketHelper` (``client.ws``)."""

from __future__ import annotations

import asyncio
import json as jsonlib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import aiohttp

from uvicorn_testserver._client.response import DEFAULT_TIMEOUT, AsyncTestResponse
from uvicorn_testserver._core.errors import ClientTimeoutError, WebSocketClosedError

__all__ = ["WebSocketConfig", "WebSocketHelper", "WebSocketLike"]


@dataclass
class WebSocketConfig:
    """Options of `AsyncTestClient.websocket`, named as in the ``websockets`` library.

    Each maps onto ``aiohttp.ClientSession.ws_connect``:

    * `subprotocols` -> ``protocols``; `extra_headers` -> ``headers``.
    * `compression` -> ``compress``: ``None``/``False`` off, ``True`` or ``"deflate"``
      per-message deflate with a 15-bit window, an int 9..15 that window size.
    * `ping_interval` -> ``heartbeat``: a ping every so many seconds (``None`` for none).
    * `ping_timeout`: aiohttp has no separate setting; with a heartbeat it waits half
      the ping interval for the pong, then closes the connection. Accepted and unused.
    * `max_size` -> ``max_msg_size`` (``None`` for no limit); a bigger message makes
      the next receive raise `WebSocketClosedError`.
    * `max_queue`: aiohttp has no bound on received messages waiting to be read.
      Accepted and unused.
    * `timeout`: how long the handshake, the closing handshake
      (``ClientWSTimeout(ws_close=...)``) and each receive of `WebSocketHelper` wait;
      ``None`` waits without limit. aiohttp's own ``ws_receive`` timeout stays off: it
      marks the connection as broken (close code 1006) when it fires.
    """

    subprotocols: Sequence[str] | None = None
    compression: bool | int | Literal["deflate"] | None = None
    extra_headers: Mapping[str, str] | None = None
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_size: int | None = 2**20
    max_queue: int | None = 32
    timeout: float | None = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        self._compress()  # fail at construction, not at connect
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {self.timeout!r}.")

    def _compress(self) -> int:
        value = self.compression
        if value is None or value is False:
            return 0
        if value is True or value == "deflate":
            return 15
        if isinstance(value, int) and 9 <= value <= 15:
            return value
        raise ValueError(
            f"compression must be None, False, True, 'deflate' or a window size from 9 to 15, not {value!r}."
        )

    def ws_connect_options(self) -> dict[str, Any]:
        """The keyword arguments of ``aiohttp.ClientSession.ws_connect`` this config stands for."""
        return {
            "protocols": tuple(self.subprotocols or ()),
            "compress": self._compress(),
            "headers": dict(self.extra_headers or {}),
            "heartbeat": self.ping_interval,
            "max_msg_size": self.max_size or 0,
            "timeout": aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.timeout),
        }


WebSocketLike: TypeAlias = "AsyncTestResponse | aiohttp.ClientWebSocketResponse"
_CLOSING = frozenset({aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED})
_KINDS = {aiohttp.WSMsgType.TEXT: "a text message (str)", aiohttp.WSMsgType.BINARY: "a binary message (bytes)"}

# A receive that timed out, per connection, still waiting for its message.
_pending: weakref.WeakKeyDictionary[aiohttp.ClientWebSocketResponse, asyncio.Task[aiohttp.WSMessage]]
_pending = weakref.WeakKeyDictionary()


async def _next_message(raw: aiohttp.ClientWebSocketResponse, timeout: float | None) -> aiohttp.WSMessage | None:
    """The next message (a CLOSED one if the connection is closed), or ``None`` after `timeout` seconds."""
    task = _pending.pop(raw, None)
    if task is None:
        if raw.closed:
            return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None)
        task = asyncio.ensure_future(raw.receive())
    try:
        await asyncio.wait({task}, timeout=timeout)
    finally:
        if not task.done():
            _pending[raw] = task  # also when the caller is cancelled: the message is kept
    return task.result() if task.done() else None


class WebSocketHelper:
    """Send and receive on a WebSocket from `AsyncTestClient.websocket` (available as ``client.ws``).

    Every method takes the `AsyncTestResponse` (or the raw
    ``aiohttp.ClientWebSocketResponse``). Receives wait at most `timeout` seconds (the
    connection's `WebSocketConfig.timeout` when ``None``) and raise `ClientTimeoutError`;
    a receive or send on a closed connection raises `WebSocketClosedError` at once;
    a message of the wrong type raises `TypeError` naming both types.

    A receive that times out leaves its read pending, and the next receive gets the
    message it brings, so none is lost. Cancelling aiohttp's ``receive()`` instead would
    mark the connection as broken and skip the closing handshake.
    """

    @staticmethod
    def _unwrap(ws: WebSocketLike) -> tuple[aiohttp.ClientWebSocketResponse, float | None, str]:
        if isinstance(ws, AsyncTestResponse):
            return ws.websocket(), ws.receive_timeout, ws.url
        if isinstance(ws, aiohttp.ClientWebSocketResponse):
            return ws, DEFAULT_TIMEOUT, "connection"
        raise TypeError(f"expected a WebSocket from client.websocket(), not {type(ws).__name__}.")

    @staticmethod
    def _closed(where: str, raw: aiohttp.ClientWebSocketResponse, detail: str = "") -> WebSocketClosedError:
        code = raw.close_code
        return WebSocketClosedError(
            f"the WebSocket {where} is closed (close code {code}{detail}): the server closed it, the connection "
            "dropped, or the test closed it. Nothing more can be sent or received on it."
        )

    async def _send(self, ws: WebSocketLike, kind: str, payload: Any) -> None:
        raw, _, where = self._unwrap(ws)
        if raw.closed:
            raise self._closed(where, raw)
        try:
            if kind == "text":
                await raw.send_str(payload)
            else:
                await raw.send_bytes(payload)
        except ConnectionError as exc:
            raise self._closed(where, raw, f", {exc}") from exc

    async def send_text(self, ws: WebSocketLike, data: str) -> None:
        """Send a text message."""
        if not isinstance(data, str):
            raise TypeError(f"send_text() sends str, not {type(data).__name__}; use send_binary() for bytes.")
        await self._send(ws, "text", data)

    async def send_json(self, ws: WebSocketLike, data: Any) -> None:
        """Send `data` as JSON in a text message."""
        await self._send(ws, "text", jsonlib.dumps(data))

    async def send_binary(self, ws: WebSocketLike, data: bytes) -> None:
        """Send a binary message."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"send_binary() sends bytes, not {type(data).__name__}; use send_text() for str.")
        await self._send(ws, "binary", bytes(data))

    async def _receive(self, ws: WebSocketLike, timeout: float | None, waiting_for: str = "") -> aiohttp.WSMessage:
        raw, default_timeout, where = self._unwrap(ws)
        timeout = default_timeout if timeout is None else timeout
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}.")
        message = await _next_message(raw, timeout)
        if message is None:
            what = waiting_for or "no message arrived"
            raise ClientTimeoutError(
                f"{what} on the WebSocket {where} within {timeout}s; the connection is still open. "
                "The app did not send anything yet: pass a larger timeout, or check what it is waiting for."
            )
        if message.type in _CLOSING:
            reason = f", reason {message.extra!r}" if message.type is aiohttp.WSMsgType.CLOSE and message.extra else ""
            raise self._closed(where, raw, reason)
        if message.type is aiohttp.WSMsgType.ERROR:
            raise self._closed(where, raw, f", after the error {message.data!r}") from message.data
        return message

    @staticmethod
    def _check_type(method: str, message: aiohttp.WSMessage, wanted: aiohttp.WSMsgType) -> None:
        if message.type is not wanted:
            got = _KINDS.get(message.type, f"a {message.type.name} frame")
            raise TypeError(
                f"{method}() expected {_KINDS[wanted]} but received {got}: {message.data!r:.200}"
                + (
                    ". Use receive_binary() and json.loads() for JSON sent as bytes."
                    if method == "receive_json"
                    else "."
                )
            )

    async def receive_text(self, ws: WebSocketLike, timeout: float | None = None) -> str:
        """Wait for the next message, which must be text, and return it."""
        message = await self._receive(ws, timeout)
        self._check_type("receive_text", message, aiohttp.WSMsgType.TEXT)
        text: str = message.data
        return text

    async def receive_json(self, ws: WebSocketLike, timeout: float | None = None) -> Any:
        """Wait for the next message, which must be text, and return it parsed as JSON."""
        message = await self._receive(ws, timeout)
        self._check_type("receive_json", message, aiohttp.WSMsgType.TEXT)
        return jsonlib.loads(message.data)

    async def receive_binary(self, ws: WebSocketLike, timeout: float | None = None) -> bytes:
        """Wait for the next message, which must be binary, and return it."""
        message = await self._receive(ws, timeout)
        self._check_type("receive_binary", message, aiohttp.WSMsgType.BINARY)
        data: bytes = message.data
        return data

    async def receive(self, ws: WebSocketLike, timeout: float | None = None) -> str | bytes:
        """Wait for the next message of either type and return its data."""
        message = await self._receive(ws, timeout)
        data: str | bytes = message.data
        return data

    async def expect_message(self, ws: WebSocketLike, expected: Any, timeout: float | None = None) -> Any:
        """Wait for the next message and check it equals `expected`; return it.

        A dict or list `expected` is compared with the message parsed as JSON; a str
        with a text message and bytes with a binary one, exactly. Raises
        `AssertionError` on a different message, `TypeError` on the wrong message type
        and `ClientTimeoutError` (a `TimeoutError`) if none arrives within `timeout`.
        """
        if isinstance(expected, dict | list):
            method, wanted = "receive_json", aiohttp.WSMsgType.TEXT
        elif isinstance(expected, str):
            method, wanted = "receive_text", aiohttp.WSMsgType.TEXT
        elif isinstance(expected, bytes):
            method, wanted = "receive_binary", aiohttp.WSMsgType.BINARY
        else:
            raise TypeError(
                f"expected must be a dict or list (compared as JSON), a str or bytes, not {type(expected).__name__}."
            )
        message = await self._receive(ws, timeout, f"Timeout waiting for expected message {expected!r:.200}: nothing")
        self._check_type(method, message, wanted)
        received = jsonlib.loads(message.data) if method == "receive_json" else message.data
        if received != expected:
            raise AssertionError(f"expected the message {expected!r:.500}, received {received!r:.500}")
        return received

    async def drain_messages(
        self, ws: WebSocketLike, timeout: float = 0.1, *, max_wait: float = DEFAULT_TIMEOUT
    ) -> list[str | bytes]:
        """Collect messages until none arrives for `timeout` seconds, or the connection closes; return them.

        Raises `ClientTimeoutError` if messages keep coming for `max_wait` seconds
        without such a quiet period.
        """
        raw, _, where = self._unwrap(ws)
        messages: list[str | bytes] = []
        try:
            async with asyncio.timeout(max_wait):
                while True:
                    message = await _next_message(raw, timeout)
                    if message is None or message.type in _CLOSING or message.type is aiohttp.WSMsgType.ERROR:
                        break
                    messages.append(message.data)
        except TimeoutError:
            raise ClientTimeoutError(
                f"drain_messages() received {len(messages)} messages on the WebSocket {where} over {max_wait}s "
                f"without a quiet period of {timeout}s; the app keeps sending. Read them with receive() instead."
            ) from None
        return messages

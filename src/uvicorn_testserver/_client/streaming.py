"""Reading bodies as they arrive: `AsyncTestStream`, and server-sent events (`EventStream`).

The event parser follows the WHATWG HTML standard's ``text/event-stream`` rules: lines
end in CRLF, LF or CR; a blank line dispatches the fields gathered since the last one;
an event cut off by the end of the stream is dropped.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json as jsonlib
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
from multidict import CIMultiDictProxy

from uvicorn_testserver._client.response import body_preview, charset_of
from uvicorn_testserver._core.errors import ClientTimeoutError, ServerStateError

__all__ = ["AsyncTestStream", "EventStream", "ServerSentEvent"]

_PREVIEW_BYTES = 2000


class AsyncTestStream:
    """An HTTP response whose body is read as it arrives (from `AsyncTestClient.stream`).

    Every read waits at most `timeout` seconds (the client's timeout when ``None``) for
    the next piece and then raises `ClientTimeoutError`; the stream stays usable.
    """

    __test__ = False

    def __init__(
        self,
        method: str,
        url: str,
        response: aiohttp.ClientResponse,
        *,
        read_timeout: float | None,
        encoding: str | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self._response = response
        self.read_timeout = read_timeout
        self._decoder = codecs.getincrementaldecoder(encoding or charset_of(response))(errors="replace")
        self._splitter = _LineSplitter()
        self._lines: deque[str] = deque()
        self._eof = False

    @property
    def status_code(self) -> int:
        """The HTTP status code."""
        return self._response.status

    @property
    def reason(self) -> str:
        """The HTTP reason phrase."""
        return self._response.reason or ""

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """The response headers."""
        return self._response.headers

    def __repr__(self) -> str:
        return f"<AsyncTestStream {self.method} {self.url} {self.status_code}>"

    async def expect_status(self, status_code: int) -> Self:
        """Return this stream if its status is `status_code`; else raise `AssertionError` with the body start.

        On a mismatch it reads up to a second's worth of body for the message.
        """
        if self.status_code != status_code:
            body = b""
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                async with asyncio.timeout(1.0):
                    body = await self._response.content.read(_PREVIEW_BYTES)
            raise AssertionError(
                f"expected status {status_code}, got {self.status_code} {self.reason} from {self.method} "
                f"{self.url}; body starts: {body_preview(body)!r}"
            )
        return self

    def _timeout(self, timeout: float | None) -> float | None:
        return self.read_timeout if timeout is None else timeout

    def _timed_out(self, what: str, timeout: float | None) -> ClientTimeoutError:
        return ClientTimeoutError(
            f"no {what} arrived from {self.method} {self.url} within {timeout}s; the response is still open. "
            "The app did not send more yet: pass a larger timeout, or check that it flushes what it writes."
        )

    async def read_chunk(self, timeout: float | None = None) -> bytes:
        """Wait for the next piece of body and return it; ``b""`` once the body has ended."""
        timeout = self._timeout(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self._response.content.readany()
        except TimeoutError:
            raise self._timed_out("data", timeout) from None

    async def read_line(self, timeout: float | None = None) -> str | None:
        """Wait for the next line (ended by ``\\n``, ``\\r\\n`` or ``\\r``) without its ending; ``None`` at the end.

        `timeout` bounds the wait for the whole line, however many chunks it takes.
        """
        timeout = self._timeout(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self._next_line()
        except TimeoutError:
            raise self._timed_out("line", timeout) from None

    async def _next_line(self) -> str | None:
        while not self._lines:
            if self._eof:
                return None
            chunk = await self._response.content.readany()
            if chunk:
                self._lines.extend(self._splitter.feed(self._decoder.decode(chunk)))
            else:
                self._eof = True
                self._lines.extend(self._splitter.feed(self._decoder.decode(b"", final=True)))
                self._lines.extend(self._splitter.flush())
        return self._lines.popleft()

    async def iter_chunks(self, timeout: float | None = None) -> AsyncIterator[bytes]:
        """Yield pieces of body as they arrive, each awaited at most `timeout` seconds."""
        while chunk := await self.read_chunk(timeout):
            yield chunk

    async def iter_lines(self, timeout: float | None = None) -> AsyncIterator[str]:
        """Yield lines as they complete, each awaited at most `timeout` seconds."""
        while (line := await self.read_line(timeout)) is not None:
            yield line

    async def read(self, timeout: float | None = None) -> bytes:
        """Read the rest of the body, waiting at most `timeout` seconds in all."""
        timeout = self._timeout(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self._response.content.read()
        except TimeoutError:
            raise self._timed_out("end of the body", timeout) from None


_NEWLINE = re.compile(r"\r\n|\r|\n")


class _LineSplitter:
    """Split text that arrives in pieces into lines ended by ``\\r\\n``, ``\\n`` or ``\\r``."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        text = self._pending + text
        # A final "\r" may be the first half of "\r\n": wait for the next piece to decide.
        hold = "\r" if text.endswith("\r") else ""
        *lines, tail = _NEWLINE.split(text[: len(text) - len(hold)])
        self._pending = tail + hold
        return lines

    def flush(self) -> list[str]:
        text, self._pending = self._pending, ""
        if not text:
            return []
        *lines, tail = _NEWLINE.split(text)
        return [*lines, tail] if tail else lines


# -- server-sent events -----------------------------------------------------------------


@dataclass(frozen=True)
class ServerSentEvent:
    """One event of a ``text/event-stream``, parsed as the WHATWG HTML standard says.

    `id` is the last event ID the stream set, in this event or an earlier one
    (``None`` if it never set one); `retry` is the reconnection time in milliseconds
    if this event carried one.
    """

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        """`data` parsed as JSON."""
        return jsonlib.loads(self.data)


class _EventParser:
    """Turn lines into events: fields accumulate until a blank line dispatches them."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            event = None
            if self._data:  # a block without data dispatches nothing
                event = ServerSentEvent(self._event or "message", "\n".join(self._data), self._last_id, self._retry)
            self._event, self._data, self._retry = "", [], None
            return event
        if line.startswith(":"):
            return None  # a comment, often a keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None  # unknown fields are ignored


class EventStream:
    """Server-sent events from one GET request (from `AsyncTestClient.sse`).

    Use ``async with client.sse(path) as events`` and ``await events.next(timeout=...)``
    or ``async for event in events``; iterating ``client.sse(path)`` directly also works
    and the request is closed at the end of the stream or when the client closes. Each
    event is awaited at most `timeout` seconds (the client's timeout when ``None``) and
    then `ClientTimeoutError` is raised. Opening checks for status 200 and a
    ``text/event-stream`` body and raises `AssertionError` otherwise.
    """

    __test__ = False

    def __init__(
        self,
        path: str,
        opener: Callable[[], AbstractAsyncContextManager[AsyncTestStream]],
        registry: set[EventStream],
    ) -> None:
        self._path = path
        self._opener = opener
        self._registry = registry  # the client's: it closes what is still open when it closes
        self._exit: contextlib.AsyncExitStack | None = None
        self._stream: AsyncTestStream | None = None
        self._parser = _EventParser()
        self._ended = False

    @property
    def stream(self) -> AsyncTestStream:
        """The underlying response (``status_code``, ``headers``); raises `ServerStateError` before opening."""
        if self._stream is None:
            raise ServerStateError(f"the event stream {self._path} is not open yet: use `async with` or iterate it.")
        return self._stream

    async def open(self) -> Self:
        """Send the request and check the answer is an event stream. Idempotent."""
        if self._exit is not None:
            return self
        exit_stack = contextlib.AsyncExitStack()
        stream = await exit_stack.enter_async_context(self._opener())
        self._exit, self._stream = exit_stack, stream
        self._registry.add(self)
        content_type = stream.headers.get("Content-Type", "")
        if stream.status_code != 200 or not content_type.startswith("text/event-stream"):
            body = b""
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                async with asyncio.timeout(1.0):
                    body = await stream._response.content.read(_PREVIEW_BYTES)
            await self.close()
            raise AssertionError(
                f"expected an event stream (200, text/event-stream) from GET {stream.url}, got "
                f"{stream.status_code} {stream.reason} ({content_type or 'no Content-Type'}); "
                f"body starts: {body_preview(body)!r}"
            )
        return self

    async def close(self) -> None:
        """Close the request. Idempotent."""
        self._ended = True
        self._registry.discard(self)
        exit_stack, self._exit = self._exit, None
        if exit_stack is not None:
            await exit_stack.aclose()

    async def next(self, timeout: float | None = None) -> ServerSentEvent:
        """Wait for the next event; raise `StopAsyncIteration` when the server has ended the stream."""
        await self.open()
        stream = self.stream
        if self._ended:
            raise StopAsyncIteration
        timeout = stream._timeout(timeout)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await stream._next_line()
                    if line is None:
                        break
                    if (event := self._parser.feed(line)) is not None:
                        return event
        except TimeoutError:
            raise stream._timed_out("server-sent event", timeout) from None
        await self.close()  # an event cut off by the end of the stream is dropped, as the standard says
        raise StopAsyncIteration

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ServerSentEvent:
        return await self.next()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

"""Errors raised by uvicorn-testserver.

Every error the harness raises on purpose derives from `ServerError`::

    ServerError (RuntimeError)
    ├── ServerStartupError        the server did not become ready
    │   └── PortInUseError        a fixed port was already taken
    ├── ServerShutdownError       the server thread would not end
    ├── ServerExceptionsError     the app raised while serving (raise_server_exceptions)
    ├── ServerStateError          a method was called in the wrong state
    ├── ClientTimeoutError        the async test client waited too long (also a TimeoutError)
    └── WebSocketClosedError      a WebSocket read or write found the connection closed

    InvalidResponseTypeError (TypeError)
                                  an HTTP-only member used on a WebSocket response, or the reverse

Errors that concern a server carry `host`, `port`, `app`, `elapsed` (seconds waited)
and `log_tail` (the last lines the server logged) as attributes, and their message
says what happened, where, how long it waited and what to try next. The app's own
exception, when there is one, is chained as `__cause__`.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence

__all__ = [
    "ClientTimeoutError",
    "InFlightWarning",
    "InvalidResponseTypeError",
    "PortInUseError",
    "ServerError",
    "ServerExceptionsError",
    "ServerShutdownError",
    "ServerStartupError",
    "ServerStateError",
    "WebSocketClosedError",
]


class ServerError(RuntimeError):
    """Base class of every error raised by uvicorn-testserver."""

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        port: int | None = None,
        app: str | None = None,
        elapsed: float | None = None,
        log_tail: str = "",
    ) -> None:
        if log_tail:
            message = f"{message}\n--- server log (last lines) ---\n{log_tail}"
        super().__init__(message)
        self.host = host
        self.port = port
        self.app = app
        self.elapsed = elapsed
        self.log_tail = log_tail


class ServerStartupError(ServerError):
    """The server did not become ready: the app failed to load or start, or time ran out.

    `reason` is what failed, in a few words, without where and how long.
    """

    reason: str = ""


class PortInUseError(ServerStartupError):
    """The fixed port asked for is already bound by another socket."""


class ServerShutdownError(ServerError):
    """The server thread did not end within the shutdown timeout, even after a forced exit."""


class ServerStateError(ServerError):
    """A method was called while the server was in a state that does not allow it."""


class ServerExceptionsError(ServerError):
    """The app raised unhandled exceptions while serving requests.

    Raised by `stop()` (and the context managers' exit) once the server has fully
    stopped, when `raise_server_exceptions` is true. `exceptions` holds them in the
    order they happened; the first is chained as `__cause__`.
    """

    def __init__(
        self,
        exceptions: Sequence[BaseException],
        *,
        served: Sequence[str] = (),
        shown: str | None = None,
        expect: str | None = None,  # how to expect them, "{names}" / "{names_tuple}" filled in
        url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        app: str | None = None,
        log_tail: str = "",
    ) -> None:
        self.exceptions = list(exceptions)
        self.served = [*served, *[""] * (len(self.exceptions) - len(served))]
        where = url or (f"http://{host}:{port}" if host is not None else "the server")
        count = len(self.exceptions)
        # The cause once, its place once, the next step once.
        first = describe_error(self.exceptions[0], self.served[0])
        served = f"the app {app} raised {count} unhandled exception{'s' if count != 1 else ''} while serving on {where}"
        # The tracebacks are printed elsewhere, once (`shown`), or the first is chained as __cause__ and Python
        # prints it above this error.
        traceback_at = shown or "above (the cause of this error)"
        if count == 1:
            lines = [first, f"{served}; its traceback is {traceback_at}."]
        else:
            lines = [f"{first} (+{count - 1} more)", f"{served}:"]
            lines += [
                f"  {describe_error(e, serving)}" for e, serving in zip(self.exceptions, self.served, strict=True)
            ]
            lines.append(f"Their tracebacks are {traceback_at}.")
            if shown is None:
                lines += [format_exception(error) for error in self.exceptions[1:]]
        kinds = list(dict.fromkeys(error_type_name(error) for error in self.exceptions))
        names = ", ".join(kinds)
        expected = (expect or "server.expect_errors({names})").format(
            names=names, names_tuple=names if len(kinds) == 1 else f"({names})"
        )
        lines.append(f"Fix the app, or if the test provokes {'it' if count == 1 else 'them'} on purpose: {expected}.")
        super().__init__("\n".join(lines), host=host, port=port, app=app, log_tail=log_tail)


def error_is_of(error: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    """`isinstance`, or for an error carried from a child process as text, the same type name."""
    type_name = getattr(error, "type_name", None)
    if type_name is None:
        return isinstance(error, types)
    return any(type_name in (kind.__qualname__, f"{kind.__module__}.{kind.__qualname__}") for kind in types)


def describe_error(error: BaseException, serving: str = "") -> str:
    """``ZeroDivisionError: division by zero in GET /divide``: one line, for summaries."""
    type_name = getattr(error, "type_name", None)  # a ChildAppError names the child's type
    if type_name is None:
        type_name = qualified_type_name(error)
        message = str(error)
    else:
        message = str(getattr(error, "message", error))
    first = message.strip().splitlines()
    text = f"{type_name}: {first[0]}" if first else type_name
    if len(text) > _ONE_LINE:
        text = text[: _ONE_LINE - 1] + "…"
    return f"{text} in {serving}" if serving else text


_ONE_LINE = 150


class ClientTimeoutError(ServerError, TimeoutError):
    """The async test client waited longer than its timeout for a response, message, chunk or event.

    Also a `TimeoutError`, so ``except TimeoutError`` catches it.
    """


class WebSocketClosedError(ServerError):
    """A WebSocket was closed (by either side, or by a protocol error) when the test read or wrote."""


class InFlightWarning(UserWarning):
    """A test ended while the app was still handling a request or WebSocket (the pytest plugin warns).

    A fixture's server then cuts it after a short grace (``uvicorn_teardown_grace``).
    """


class InvalidResponseTypeError(TypeError):
    """An HTTP-only member was used on a WebSocket response, or a WebSocket-only one on an HTTP response.

    A `TypeError`, not a `ServerError`: the server is fine, the test asked the wrong kind of object.
    """


def format_exception(exc: BaseException) -> str:
    """Return the full traceback of `exc` as text."""
    return "".join(traceback.format_exception(exc)).rstrip()


def qualified_type_name(exc: BaseException) -> str:
    """``ValueError`` for a builtin, ``httpx.ConnectError`` for any other exception class."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def exception_fields(exc: BaseException) -> dict[str, str]:
    """`exc` as text that crosses a process boundary: ``type``, ``message``, ``traceback``. An error carried
    across one already (a `ChildAppError`) gives the fields it carries, so it crosses the next one unchanged."""
    carried = getattr(exc, "type_name", None)
    if isinstance(carried, str):
        message, traceback = getattr(exc, "message", ""), getattr(exc, "traceback", "")
        return {"type": carried, "message": str(message), "traceback": str(traceback)}
    return {"type": qualified_type_name(exc), "message": str(exc), "traceback": format_exception(exc)}


def expected_count(types: tuple[object, ...], at_least: object, at_most: object) -> None:
    """Check the arguments of an `expect_errors`: exception classes, and counts with 0 <= at_least <= at_most."""
    if not types or not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in types):
        raise TypeError(f"expect_errors() takes one or more exception classes, not {types!r}.")
    for name, count in (("at_least", at_least), ("at_most", at_most)):
        if count is None and name == "at_most":
            continue
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"expect_errors({name}=...) takes a whole number of errors, not {count!r}.")
        if count < 0:
            raise ValueError(f"expect_errors({name}=...) takes 0 or more errors, not {count!r}.")
    if at_most is not None and at_most < at_least:  # type: ignore[operator]  # both ints, checked above
        raise ValueError(f"expect_errors() got at_most={at_most!r} below at_least={at_least!r}.")


def expected_count_problem(
    types: tuple[type[BaseException], ...], count: int, at_least: int, at_most: int | None, where: str
) -> str:
    """What is wrong with `count` expected errors raised `where` ("in this block"), as the end of a sentence
    ('' if nothing is)."""
    names = " or ".join(kind.__name__ for kind in types)
    raised = "none" if count == 0 else f"{count}"
    if count < at_least:
        wanted = "" if at_least == 1 else f" at least {at_least} times"
        return f"{names}{wanted} {where}; it raised {raised}"
    if at_most is not None and count > at_most:
        return f"{names} at most {at_most} time{'s' if at_most != 1 else ''} {where}; it raised {raised}"
    return ""


def error_type_name(error: BaseException) -> str:
    """The short name of `error`'s type (a `ChildAppError`'s: the child's), as hints and log references name it."""
    return str(getattr(error, "type_name", type(error).__name__)).rpartition(".")[2]

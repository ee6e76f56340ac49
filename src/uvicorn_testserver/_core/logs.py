"""Per-server log capture that never reconfigures the process's logging.

uvicorn logs to the process-wide loggers ``uvicorn.error`` and ``uvicorn.access``,
so several servers share them. A filter on each logger (filters survive
``logging.config.dictConfig``, handlers do not) copies every record into the log of
the server whose code emitted it; the server is found through a context variable
that its event-loop task, and every task and callback it starts, inherits. Records
then go on to whatever handlers the user configured, pytest's included.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from uvicorn_testserver._core.errors import error_type_name, format_exception

__all__ = [
    "LOGGER_NAMES",
    "ServerLog",
    "capture_into",
    "carries_traceback",
    "current_log",
    "harness_logger",
    "install_capture",
    "log_level_lease",
    "passes_on",
    "record_fields",
    "record_from_fields",
    "without_traceback",
]

#: The loggers whose records are captured per server.
LOGGER_NAMES = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi", "uvicorn_testserver")

harness_logger = logging.getLogger("uvicorn_testserver")
harness_logger.addHandler(logging.NullHandler())  # a library never prints on its own; see ServerLog

_current_log: contextvars.ContextVar[ServerLog | None] = contextvars.ContextVar("uvicorn_testserver_log", default=None)


class ServerLog:
    """The log records one server emitted, newest last, at most `max_records` of them.

    Thread-safe: the server thread appends while the test reads. The server's records
    below `level`, and its access lines if `drop_access_log`, are dropped: neither
    kept here nor passed on to the process's handlers.
    """

    def __init__(self, max_records: int = 5000) -> None:
        self._records: deque[logging.LogRecord] = deque(maxlen=max_records)
        self._count = 0
        self._lock = threading.Lock()
        self.drop_access_log = False
        self.level = logging.NOTSET
        self.propagate = True  # False: the records stay here, the process's handlers never see them
        #: Set: records passed on to the process's handlers carry this reference (``{name}``: the error's type)
        #: instead of their traceback, which is shown once elsewhere (the plugin's report section). The records
        #: kept here keep it.
        self.traceback_elsewhere: str | None = None

    def append(self, record: logging.LogRecord) -> None:
        with self._lock:
            self._records.append(record)
            self._count += 1

    @property
    def records(self) -> list[logging.LogRecord]:
        """A copy of the captured records."""
        with self._lock:
            return list(self._records)

    def mark(self) -> int:
        """Return a position to pass to `records_since` / `text_since` later."""
        with self._lock:
            return self._count

    def records_since(self, mark: int) -> list[logging.LogRecord]:
        """The records captured after `mark` (those still kept)."""
        with self._lock:
            new = self._count - mark
            return list(self._records)[-new:] if new > 0 else []

    def text_since(self, mark: int) -> str:
        """The records captured after `mark`, formatted one per line."""
        return format_records(self.records_since(mark))

    @property
    def text(self) -> str:
        """Every captured record, formatted one per line (tracebacks included)."""
        return format_records(self.records)

    def tail(self, lines: int = 20, *, shown: Collection[BaseException] = ()) -> str:
        """The last `lines` lines of `text`; the tracebacks of the errors in `shown` (shown elsewhere) left out."""
        return "\n".join(format_records(self.records, shown=shown).splitlines()[-lines:])


def format_records(
    records: list[logging.LogRecord],
    *,
    shown: Collection[BaseException] = (),
    reference: str = "[{name} traceback: shown with the error]",
) -> str:
    """Format records as ``HH:MM:SS.mmm LEVEL logger: message`` lines, tracebacks below.

    A record about an error in `shown` gets `reference` (``{name}``: the error's type)
    instead of its traceback, which is printed with the error.
    """
    lines = []
    for record in records:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        message = record.getMessage()
        # A framework that reports a failed lifespan startup sends the traceback as the message (Starlette).
        traced = next((e for e in shown if message.rstrip().endswith(_last_line(e))), None) if shown else None
        if traced is not None and message.startswith(_TRACEBACK):
            message = reference.format(name=error_type_name(traced))
        lines.append(f"{stamp} {record.levelname:<8} {record.name}: {message}")
        error = record.exc_info[1] if record.exc_info else None
        text = format_exception(error) if error is not None else getattr(record, "exc_text", None)
        if not text:
            continue
        already = next((e for e in shown if e is error or getattr(e, "traceback", None) == text), None)
        if already is None:
            lines.append(text)
        else:
            lines[-1] = f"{lines[-1].rstrip()} {reference.format(name=error_type_name(already))}"
    return "\n".join(lines)


def _last_line(error: BaseException) -> str:
    """The last line of `error`'s traceback: ``RuntimeError: database is down``."""
    text = getattr(error, "traceback", None) or format_exception(error)
    return str(text).rstrip().rpartition("\n")[2]


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """`record` as JSON-able fields, for another process to rebuild with `record_from_fields`."""
    error = record.exc_info[1] if record.exc_info else None
    return {
        "name": record.name,
        "levelno": record.levelno,
        "levelname": record.levelname,
        "msg": record.getMessage(),
        "created": record.created,
        "exc_text": format_exception(error) if error is not None else None,
        "pathname": record.pathname,
        "lineno": record.lineno,
        "funcName": record.funcName,
    }


def record_from_fields(fields: Mapping[str, Any], **extra: Any) -> logging.LogRecord:
    """The record `record_fields` described (file name and line kept), with `extra` attributes."""
    pathname = str(fields.get("pathname", ""))
    return logging.makeLogRecord(
        {
            "name": fields["name"],
            "levelno": fields["levelno"],
            "levelname": fields["levelname"],
            "msg": str(fields["msg"]),
            "created": fields["created"],
            "msecs": (fields["created"] % 1) * 1000,
            "pathname": pathname,
            "filename": os.path.basename(pathname),
            "module": os.path.splitext(os.path.basename(pathname))[0],
            "lineno": fields.get("lineno", 0),
            "funcName": fields.get("funcName", ""),
            "exc_text": fields.get("exc_text") or None,  # formatters print it below the message
            **extra,
        }
    )


def passes_on(log: ServerLog, logger_name: str) -> bool:
    """Whether `log`'s records go on to the process's handlers: with `ServerLog.propagate`, and where logging is
    configured. Where it is not (a plain script), only logging's last resort would print them: a library never
    prints on its own, and the harness raises or keeps what matters, with the log's tail."""
    return log.propagate and logging.getLogger(logger_name).hasHandlers()


_TRACEBACK = "Traceback (most recent call last)"


def carries_traceback(record: logging.LogRecord) -> bool:
    """Whether `record` prints a traceback: its exception's, a child's as text, or one sent as the message (a
    failed lifespan startup's, from Starlette)."""
    return bool(record.exc_info or record.exc_text) or str(record.msg).startswith(_TRACEBACK)


def without_traceback(record: logging.LogRecord, log: ServerLog) -> None:
    """Replace `record`'s traceback by a reference to where it is shown."""
    error = record.exc_info[1] if record.exc_info else None
    # A traceback as text (a child's, or the message itself): its last line names the type.
    traceback_text = record.exc_text or (str(record.msg) if str(record.msg).startswith(_TRACEBACK) else "")
    last = traceback_text.strip().rpartition("\n")[2]
    name = type(error).__name__ if error is not None else last.partition(":")[0].rpartition(".")[2] or "error"
    reference = (log.traceback_elsewhere or "[{name} traceback: shown with the error]").format(name=name)
    if traceback_text and not record.exc_text:  # the message was the traceback: the reference replaces it
        record.msg, record.args = reference, None
    else:
        record.msg = f"{str(record.msg).rstrip()} {reference}"
    record.exc_info = record.exc_text = None


class _CaptureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        log = _current_log.get()
        if log is None:
            return True
        if record.levelno < log.level or (log.drop_access_log and record.name == "uvicorn.access"):
            return False
        passed_on = passes_on(log, record.name)
        if passed_on and log.traceback_elsewhere is not None and carries_traceback(record):
            log.append(copy.copy(record))
            without_traceback(record, log)
        else:
            log.append(record)
        return passed_on


_filter = _CaptureFilter()
_install_lock = threading.Lock()


def install_capture() -> None:
    """Make sure the capture filter sits on every captured logger. Idempotent."""
    with _install_lock:
        for name in LOGGER_NAMES:
            logger = logging.getLogger(name)
            if _filter not in logger.filters:
                logger.addFilter(_filter)


def current_log() -> ServerLog | None:
    """The log of the server whose code is running in this context, if any."""
    return _current_log.get()


@contextmanager
def capture_into(log: ServerLog) -> Iterator[None]:
    """Attribute records emitted in this context (and tasks started from it) to `log`."""
    token = _current_log.set(log)
    try:
        yield
    finally:
        _current_log.reset(token)


class _LevelLeases:
    """Lower uvicorn's logger levels while servers that need it run; put them back after.

    uvicorn creates records only at or above its loggers' effective level, so a server
    started with ``log_level="info"`` needs them at INFO. A logger is lowered only if
    its own level (or, when NOTSET, its parent's) is above what a server asked for; with
    the default ``log_level="warning"`` and an unconfigured process nothing changes at
    all. A logger gets its level back when the last server that needed it lowered stops,
    unless someone set another level meanwhile: that one is kept.
    """

    _names = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: dict[str, int] = {}  # level before the harness lowered it
        self._set: dict[str, int] = {}  # level the harness set
        self._needs: dict[str, list[int]] = {}  # levels asked for by the leases that needed it lowered

    def _take(self, name: str, level: int) -> bool:
        logger = logging.getLogger(name)
        if name in self._set and logger.level != self._set[name]:
            self._base[name] = logger.level  # set by someone else meanwhile: that is the level to keep
        base = self._base.get(name, logger.level)
        natural = base or (logger.parent.getEffectiveLevel() if logger.parent else logging.WARNING)
        if natural <= level:
            return False
        self._base[name] = base
        self._needs.setdefault(name, []).append(level)
        self._set[name] = min(self._needs[name])
        logger.setLevel(self._set[name])
        return True

    def _release(self, name: str, level: int) -> None:
        logger = logging.getLogger(name)
        needs = self._needs[name]
        needs.remove(level)
        if logger.level != self._set[name]:
            self._base[name] = logger.level
        if needs:
            self._set[name] = min(needs)
            logger.setLevel(self._set[name])
            return
        logger.setLevel(self._base.pop(name))
        del self._needs[name], self._set[name]

    @contextmanager
    def lease(self, level: int) -> Iterator[None]:
        with self._lock:
            taken = [name for name in self._names if self._take(name, level)]
        try:
            yield
        finally:
            with self._lock:
                for name in taken:
                    self._release(name, level)


_leases = _LevelLeases()
log_level_lease = _leases.lease

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
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from uvicorn_testserver._errors import format_exception

__all__ = [
    "LOGGER_NAMES",
    "ServerLog",
    "capture_into",
    "current_log",
    "harness_logger",
    "install_capture",
    "log_level_lease",
]

#: The loggers whose records are captured per server.
LOGGER_NAMES = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi", "uvicorn_testserver")

harness_logger = logging.getLogger("uvicorn_testserver")
harness_logger.addHandler(logging.NullHandler())  # a library never prints on its own; see ServerLog

_current_log: contextvars.ContextVar[ServerLog | None] = contextvars.ContextVar("uvicorn_testserver_log", default=None)


class ServerLog:
    """The log records one server emitted, newest last, at most `max_records` of them.

    Thread-safe: the server thread appends while the test reads.
    """

    def __init__(self, max_records: int = 5000) -> None:
        self._records: deque[logging.LogRecord] = deque(maxlen=max_records)
        self._count = 0
        self._lock = threading.Lock()
        self.drop_access_log = False

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

    def tail(self, lines: int = 20) -> str:
        """The last `lines` lines of `text`."""
        return "\n".join(self.text.splitlines()[-lines:])


def format_records(records: list[logging.LogRecord]) -> str:
    """Format records as ``HH:MM:SS.mmm LEVEL logger: message`` lines."""
    lines = []
    for record in records:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        lines.append(f"{stamp} {record.levelname:<8} {record.name}: {record.getMessage()}")
        if record.exc_info and record.exc_info[1] is not None:
            lines.append(format_exception(record.exc_info[1]))
    return "\n".join(lines)


class _CaptureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        log = _current_log.get()
        if log is None:
            return True
        if log.drop_access_log and record.name == "uvicorn.access":
            return False
        log.append(record)
        return True


_filter = _CaptureFilter()
_install_lock = threading.Lock()


def install_capture() -> None:
    """Make sure the capture filter sits on every captured logger. Idempotent."""
    with _install_lock:
        for name in LOGGER_NAMES:
            logger = logging.getLogger(name)
            if _filter not in logger.filters:
                logger.addFilter(_filter)
        # uvicorn's HTTP protocols write access lines only if `hasHandlers()`; a NullHandler on
        # uvicorn's own logger, as libraries are told to add, keeps them without printing anything.
        if not logging.getLogger("uvicorn.access").hasHandlers():
            logging.getLogger("uvicorn").addHandler(logging.NullHandler())


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
    """Lower uvicorn's logger levels while servers that asked for them run; restore them after.

    uvicorn only creates records at or above its loggers' level, so a server started
    with ``log_level="info"`` needs them at INFO. The original levels come back when
    the last server stops.
    """

    _names = ("uvicorn.error", "uvicorn.access", "uvicorn.asgi")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: list[int] = []
        self._saved: dict[str, int] = {}

    def _apply(self) -> None:
        if not self._active:
            for name, level in self._saved.items():
                logging.getLogger(name).setLevel(level)
            self._saved.clear()
            return
        wanted = min(self._active)
        for name in self._names:
            logger = logging.getLogger(name)
            original = self._saved.setdefault(name, logger.level)
            # Never raise a level the user set lower themselves.
            logger.setLevel(wanted if original == logging.NOTSET else min(wanted, original))

    @contextmanager
    def lease(self, level: int) -> Iterator[None]:
        with self._lock:
            self._active.append(level)
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._active.remove(level)
                self._apply()


_leases = _LevelLeases()
log_level_lease = _leases.lease

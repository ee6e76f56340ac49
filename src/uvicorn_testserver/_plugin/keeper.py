"""The keeper of a run's shared server: ``python -m uvicorn_testserver._plugin.keeper DIR``.

A keeper is a process-mode server whose life is the run. It runs in a session of its
own (Ctrl-C in the terminal is for the workers, which end it), serves the app through
the same parent/child code as ``mode="process"``, and tells the run's pytest processes
what they need through the run's directory (`run_files`). It stops the server and
exits once no pytest process of the run is left, or on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from uvicorn_testserver._core.errors import exception_fields, format_exception
from uvicorn_testserver._core.logs import record_fields
from uvicorn_testserver._faces.sync_server import ProcessServer
from uvicorn_testserver._plugin.run_files import POLL, live_users, running_tests, write_atomically

__all__ = ["KeptServer", "keep"]


class KeptServer(ProcessServer):
    """The run's server in its keeper: each app error goes to `on_app_error` as it happens."""

    def __init__(self, app: str, on_app_error: Callable[[BaseException, str], None], **options: Any) -> None:
        super().__init__(app, **options)
        self._core.on_app_error = on_app_error

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``: what the workers build their URLs with."""
        return self._core.scheme

    def in_flight_fields(self) -> list[dict[str, Any]]:
        """What the app handles now, as the control socket tells it."""
        now = time.monotonic()
        return [
            {"method": request.method, "path": request.path, "running": now - request.started}
            for request in self._core.in_flight()
        ]


class _JsonLinesHandler(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = path.open("a", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file.write(json.dumps(record_fields(record)) + "\n")


def keep(directory: Path) -> int:
    """The keeper's main: serve the spec'd app until no pytest process of the run is left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    spec = json.loads(directory.joinpath("spec.json").read_text())
    sys.path[:0] = [entry for entry in spec["sys_path"] if entry not in sys.path]  # the child inherits it
    os.chdir(spec["cwd"])
    options = {key: value for key, value in spec["options"].items() if key != "mode"}
    options.update(raise_server_exceptions=False, propagate_logs=True)  # each error and record goes to a file
    root = logging.getLogger()
    root.addHandler(_JsonLinesHandler(directory / "log.jsonl"))
    root.setLevel(logging.DEBUG)  # the server's own log_level decides what it passes on
    errors = directory.joinpath("errors.jsonl").open("a", buffering=1)

    def record_error(exc: BaseException, serving: str) -> None:
        entry = {"time": time.time(), "serving": serving, **exception_fields(exc), "running": running_tests(directory)}
        errors.write(json.dumps(entry) + "\n")

    try:
        server = KeptServer(spec["app"], record_error, **options)
        server.start()
    except Exception as exc:  # noqa: BLE001 - said to the worker waiting for it, with the traceback
        reason = getattr(exc, "reason", None) or repr(exc)
        cause = exc.__cause__ or exc
        failure = {"reason": reason, "traceback": format_exception(cause) if cause is not exc else ""}
        write_atomically(directory / "failed.json", json.dumps(failure))
        return 1
    info = {
        "pid": server.pid,
        "keeper": os.getpid(),
        "host": server.host,
        "port": server.port,
        "scheme": server.scheme,
        "ca_path": str(server.ca_path) if options.get("ssl") else None,
        "spec": {"app": spec["app"], "options": spec["options"]},
    }
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(directory / "control.sock"))
    control.listen()
    answering = threading.Thread(target=_answer, args=(control, server), name="uvicorn-testserver control")
    answering.daemon = True
    answering.start()
    write_atomically(directory / "server.json", json.dumps(info))
    while not stop.wait(POLL * 2):
        if not live_users(directory) or not server.is_running:
            break
    try:
        server.stop()
    finally:
        directory.joinpath("server.json").unlink(missing_ok=True)
        control.close()
        errors.close()
    return 0


def _answer(control: socket.socket, server: KeptServer) -> None:
    """Answer each request on `control`: ``settle`` once the server finished its step, ``in_flight`` with what
    the app handles now."""
    with contextlib.suppress(OSError):
        while True:
            connection, _ = control.accept()
            with connection, contextlib.suppress(OSError):
                connection.settimeout(5)
                request = connection.recv(64).strip()
                answer: Any = None
                if request == b"settle":
                    server.settle()
                    answer = "ok"
                elif request == b"in_flight":
                    answer = server.in_flight_fields()
                connection.sendall(json.dumps(answer).encode() + b"\n")


if __name__ == "__main__":
    sys.exit(keep(Path(sys.argv[1])))

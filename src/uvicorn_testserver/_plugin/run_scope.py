"""One server for the whole test run, shared by every pytest-xdist worker (``uvicorn_server_scope = run``).

The server runs in a *keeper* process (``python -m uvicorn_testserver._plugin.run_scope DIR``) of
its own session, so no worker owns it and Ctrl-C in the terminal does not reach it.
Workers coordinate through files in a directory named after the run, under a lock
(`filelock`):

* ``users/<pid>``: one file per pytest process of the run, from its start to its end.
  The keeper stops the server and exits once no such process is alive, so a worker
  that crashes or is killed does not keep it running, and nothing outlives the run.
* ``spec.json``: what to serve (written by the first worker that needs the server, which
  then starts the keeper); ``server.json``: where it serves, once it is ready;
  ``failed.json``: why it could not start.
* ``control.sock``: a Unix socket on which the keeper answers ``settle`` once its event
  loop has finished the step it was in, so that what the app did for a response the
  client has just read (an error, a log line) is in the files.
* ``log.jsonl``: the server's log records; ``errors.jsonl``: the app's unhandled
  exceptions, each with the tests that were running on any worker when it happened
  (from ``running/<pid>``), which is how an error is attributed to the test that caused it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from uvicorn_testserver._core.errors import ServerStartupError, exception_fields, format_exception
from uvicorn_testserver._core.logs import format_records, record_fields, record_from_fields
from uvicorn_testserver._core.settings import ServerURL, server_url

__all__ = ["SharedRun", "SharedServer", "owns_the_run", "run_directory"]

_POLL = 0.05  # how often the keeper looks for live users, and a worker for the keeper's answer


def owns_the_run(config: Any) -> bool:
    """Whether this pytest process started the run (is not a pytest-xdist worker): it ends the shared server."""
    return getattr(config, "workerinput", None) is None


def run_directory(config: Any) -> Path:
    """The directory the pytest processes of this run share, named after pytest-xdist's run id.

    The xdist controller takes part too (it lives until the last worker has finished):
    it sets the run id its workers will get, unless one was given with ``--testrunuid``.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        run_id = workerinput["testrunuid"]
    else:
        run_id = getattr(config.option, "testrunuid", None) or uuid.uuid4().hex
        if hasattr(config.option, "testrunuid"):  # pytest-xdist is installed
            config.option.testrunuid = run_id
    return Path(tempfile.gettempdir()) / f"uvicorn-testserver-run-{run_id}"


class SharedServer:
    """``uvicorn_server`` with ``uvicorn_server_scope = run``: the address of the server all workers share.

    It runs in a process of its own; `pid` is that process's. The URL accessors are
    those of `UvicornTestServer`.
    """

    def __init__(self, app: str, info: dict[str, Any]) -> None:
        self.app = app
        self.host: str = info["host"]
        self.port: int = info["port"]
        self.pid: int = info["pid"]
        self.scheme: str = info["scheme"]
        self._ca_path: str | None = info.get("ca_path")

    @property
    def base_url(self) -> str:
        """``http://host:port`` (``https://`` with TLS), for any HTTP client."""
        return server_url(self.scheme, self.host, self.port)

    @property
    def ws_url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS), for WebSocket clients."""
        return server_url("wss" if self.scheme == "https" else "ws", self.host, self.port)

    @property
    def url(self) -> ServerURL:
        """``server.url("/path")``: the absolute HTTP URL of a path; also the base URL as a string (`ServerURL`)."""
        return server_url(self.scheme, self.host, self.port)

    @property
    def ca_path(self) -> Path:
        """With ``ssl=True``: the CA certificate file (PEM) the server's certificate is signed by."""
        if self._ca_path is None:
            raise ValueError(f"the shared server on {self.base_url} does not use ssl=True")
        return Path(self._ca_path)

    def __repr__(self) -> str:
        return f"<SharedServer {self.app!r} on {self.base_url} (pid {self.pid})>"


class SharedRun:
    """This pytest process's part in the run's shared server: registration, attaching, and per-test reading."""

    def __init__(self, directory: Path, *, owner: bool) -> None:
        self.directory = directory
        self.owner = owner  # the run's first pytest process (xdist's controller): it ends the server, last
        self.server: SharedServer | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self._errors_offset = 0
        directory.joinpath("users").mkdir(parents=True, exist_ok=True)
        directory.joinpath("running").mkdir(exist_ok=True)
        self._user = directory / "users" / str(os.getpid())
        self._user.touch()

    def _lock(self, timeout: float) -> Any:
        from filelock import FileLock

        return FileLock(self.directory / "lock", timeout=timeout)

    # -- attaching --

    def attach(self, app: str, options: dict[str, Any], startup_timeout: float) -> SharedServer:
        """The run's server: started in a keeper process by the first worker to ask, found by the others."""
        from filelock import Timeout

        spec = {"app": app, "options": options, "sys_path": [os.path.abspath(p) for p in sys.path], "cwd": os.getcwd()}
        try:
            with self._lock(startup_timeout + 10):
                info = self._live_server()
                if info is None:
                    self._raise_earlier_failure(spec)
                    info = self._start_keeper(spec, startup_timeout)
                else:
                    self._check_same(spec, info)
        except Timeout as exc:
            raise _startup_error(
                f"uvicorn server for {app!r} shared by this run: another pytest process held the start lock "
                f"{self.directory / 'lock'} for more than {startup_timeout + 10:g}s. Is a worker stuck starting it?",
                reason="the shared server's start lock timed out",
                app=app,
            ) from exc
        self.server = SharedServer(app, info)
        self._errors_offset = self._size("errors.jsonl")
        return self.server

    def _live_server(self) -> dict[str, Any] | None:
        info = _read_json(self.directory / "server.json")
        if info is not None and _alive(info["pid"]):
            return info
        return None

    def _check_same(self, spec: dict[str, Any], info: dict[str, Any]) -> None:
        started = info["spec"]
        if (started["app"], started["options"]) != (spec["app"], spec["options"]):
            raise _startup_error(
                f"the run's shared uvicorn_server serves {started['app']!r} with {started['options']!r}, but this "
                f"worker asks for {spec['app']!r} with {spec['options']!r}. With uvicorn_server_scope = run, every "
                "worker must ask for the same app and options.",
                reason="workers asked for different shared servers",
                app=spec["app"],
            )

    def _raise_earlier_failure(self, spec: dict[str, Any]) -> None:
        """Once the shared server failed to start, every worker reports that, instead of starting it again."""
        failed = _read_json(self.directory / "failed.json")
        if failed is not None:
            raise self._start_failure(spec, failed, " (when another worker of this run started it)")

    def _start_failure(self, spec: dict[str, Any], failed: dict[str, Any], when: str = "") -> ServerStartupError:
        reason = failed["reason"]
        return _startup_error(
            f"uvicorn server for {spec['app']!r} shared by this run failed to start{when}: {reason}"
            + (f"\n{failed['traceback']}" if failed.get("traceback") else "")
            + self._keeper_output(),
            reason=reason,
            app=spec["app"],
        )

    def _start_keeper(self, spec: dict[str, Any], startup_timeout: float) -> dict[str, Any]:
        self.directory.joinpath("server.json").unlink(missing_ok=True)
        self.directory.joinpath("spec.json").write_text(json.dumps(spec))
        output = self.directory.joinpath("keeper.out").open("wb")
        with output:
            self._keeper = subprocess.Popen(
                [sys.executable, "-m", "uvicorn_testserver._plugin.run_scope", str(self.directory)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is for the workers; they stop it
            )
        deadline = time.monotonic() + startup_timeout + 5  # the keeper enforces startup_timeout itself
        while time.monotonic() < deadline:
            info = _read_json(self.directory / "server.json")
            if info is not None:
                return info
            failed = _read_json(self.directory / "failed.json")
            if failed is None and self._keeper.poll() is not None:
                failed = {"reason": f"the keeper process exited with {self._keeper.returncode}"}
                _write_atomically(self.directory / "failed.json", json.dumps(failed))
            if failed is not None:
                self._reap_keeper()
                raise self._start_failure(spec, failed)
            time.sleep(_POLL)
        self._stop_keeper()
        raise _startup_error(
            f"uvicorn server for {spec['app']!r} shared by this run was not ready within "
            f"startup_timeout={startup_timeout}s; the keeper process was stopped.{self._keeper_output()}",
            reason="not ready in time",
            app=spec["app"],
        )

    def _keeper_output(self) -> str:
        text = _tail(self.directory / "keeper.out", 20)
        return f"\n--- keeper process output (last lines) ---\n{text}" if text else ""

    # -- per test --

    @contextlib.contextmanager
    def running(self, nodeid: str) -> Iterator[None]:
        """While the test runs, the keeper can name it as a possible cause of an app error."""
        marker = self.directory / "running" / str(os.getpid())
        marker.write_text(nodeid)
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)

    def settle(self) -> None:
        """Wait (at most 5 s) until the keeper's loop has finished the step it is in."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as control:
            control.settimeout(5)
            control.connect(str(self.directory / "control.sock"))
            control.sendall(b"settle\n")
            control.recv(16)

    def log_mark(self) -> int:
        """Where the server's log stands now, for `log_since`."""
        return self._size("log.jsonl")

    def log_since(self, mark: int) -> str:
        """The server's log lines written since `mark`, formatted as a server's own (from every worker's requests)."""
        entries, _ = _read_jsonl(self.directory / "log.jsonl", mark)
        return format_records([record_from_fields(entry) for entry in entries])

    def new_errors(self) -> list[dict[str, Any]]:
        """The app errors recorded since the last call (with ``running``: the tests running at the time)."""
        entries, self._errors_offset = _read_jsonl(self.directory / "errors.jsonl", self._errors_offset)
        return entries

    def _size(self, name: str) -> int:
        try:
            return self.directory.joinpath(name).stat().st_size
        except OSError:
            return 0

    # -- the end of this process's session --

    def leave(self, timeout: float) -> None:
        """Unregister. The owner, the run's first pytest process, then waits (up to `timeout`) for the others
        to leave, stops the keeper, waits for it and removes the directory: when pytest returns, nothing of the
        run's server is left. (A worker that crashed leaves no user behind: dead processes do not count.)"""
        self._user.unlink(missing_ok=True)
        if not self.owner:
            return
        deadline = time.monotonic() + timeout
        while _live_users(self.directory) and time.monotonic() < deadline:
            time.sleep(_POLL / 5)
        with self._lock(max(0.0, deadline - time.monotonic())):
            info = _read_json(self.directory / "server.json")
            if info is not None and _alive(info["pid"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info["pid"], signal.SIGTERM)
                _wait_gone(info["pid"], max(1.0, deadline - time.monotonic()), self._keeper)
        self._reap_keeper()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _stop_keeper(self) -> None:
        if self._keeper is not None and self._keeper.poll() is None:
            self._keeper.kill()
        self._reap_keeper()

    def _reap_keeper(self) -> None:
        if self._keeper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._keeper.wait(5)


# -- the keeper process ----------------------------------------------------------------------------


class _JsonLinesHandler(logging.Handler):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = path.open("a", buffering=1)

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file.write(json.dumps(record_fields(record)) + "\n")


def keep(directory: Path) -> int:
    """The keeper's main: serve the spec'd app until no pytest process of the run is left."""
    from uvicorn_testserver._core.engine import ServerCore
    from uvicorn_testserver._core.settings import DEFAULTS, LEVELS, ServerSettings
    from uvicorn_testserver._runners.thread import ThreadRun

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    spec = json.loads(directory.joinpath("spec.json").read_text())
    sys.path[:0] = [entry for entry in spec["sys_path"] if entry not in sys.path]
    os.chdir(spec["cwd"])
    options = dict(spec["options"])
    options.pop("mode", None)
    os.environ.update(options.pop("env", None) or {})
    if cwd := options.pop("cwd", None):
        os.chdir(cwd)
    harness = {key: options.pop(key) for key in list(options) if key in DEFAULTS}
    harness["raise_server_exceptions"] = False  # each error goes to the errors file as it happens
    root = logging.getLogger()
    root.addHandler(_JsonLinesHandler(directory / "log.jsonl"))
    root.setLevel(LEVELS[harness.get("log_level", "info")])
    errors = directory.joinpath("errors.jsonl").open("a", buffering=1)

    def record_error(exc: BaseException, serving: str) -> None:
        entry = {"time": time.time(), "serving": serving, **exception_fields(exc), "running": _running(directory)}
        errors.write(json.dumps(entry) + "\n")

    try:
        settings = ServerSettings.build(spec["app"], options={**options, **harness})
        core = ServerCore(settings, ThreadRun)
        core.on_app_error = record_error
        core.start()
    except Exception as exc:  # noqa: BLE001 - said to the worker waiting for it, with the traceback
        reason = getattr(exc, "reason", None) or repr(exc)
        cause = exc.__cause__ or exc
        failure = {"reason": reason, "traceback": format_exception(cause) if cause is not exc else ""}
        _write_atomically(directory / "failed.json", json.dumps(failure))
        return 1
    tls = settings.tls
    info = {
        "pid": os.getpid(),
        "host": settings.host,
        "port": core.port,
        "scheme": settings.scheme,
        "ca_path": str(tls.ca_path) if tls is not None and tls.ca_path is not None else None,
        "spec": {"app": spec["app"], "options": spec["options"]},
    }
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(directory / "control.sock"))
    control.listen()
    answering = threading.Thread(target=_answer, args=(control, core.settle), name="uvicorn-testserver control")
    answering.daemon = True
    answering.start()
    _write_atomically(directory / "server.json", json.dumps(info))
    while not stop.wait(_POLL * 2):
        if not _live_users(directory):
            break
    try:
        core.stop()
    finally:
        directory.joinpath("server.json").unlink(missing_ok=True)
        control.close()
        errors.close()
    return 0


def _answer(control: socket.socket, settle: Callable[[], None]) -> None:
    """Answer each ``settle`` request on `control` once the server's loop has finished its step."""
    with contextlib.suppress(OSError):
        while True:
            connection, _ = control.accept()
            with connection, contextlib.suppress(OSError):
                connection.settimeout(5)
                if connection.recv(16).startswith(b"settle"):
                    settle()
                    connection.sendall(b"ok\n")


# -- helpers ------------------------------------------------------------------------------------------


def _startup_error(message: str, *, reason: str, app: str) -> ServerStartupError:
    error = ServerStartupError(message, app=app)
    error.reason = reason
    return error


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, which has exited but is not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill()


def _live_users(directory: Path) -> list[int]:
    users = []
    for entry in directory.joinpath("users").glob("*"):
        with contextlib.suppress(ValueError):
            if _alive(int(entry.name)):
                users.append(int(entry.name))
    return users


def _running(directory: Path) -> list[str]:
    tests = []
    for entry in directory.joinpath("running").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            if _alive(int(entry.name)):
                tests.append(entry.read_text())
    return sorted(tests)


def _wait_gone(pid: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.pid == pid:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(_POLL / 5)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def _read_jsonl(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of `path` from `offset` on, and the offset after them."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except OSError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    entries = []
    for line in complete.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries, offset + len(complete)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(keep(Path(sys.argv[1])))

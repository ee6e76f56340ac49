"""One server for the whole test run, shared by every pytest-xdist worker (``uvicorn_server_scope = run``).

The server runs in a *keeper* process (`keeper`), a process-mode server whose life is the
run. The first pytest process that needs it writes what to serve and starts the keeper;
the others find it. They coordinate through the run's directory (`run_files`), and each
sees the server through `SharedServer`, a face like the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from uvicorn_testserver._core.errors import ServerStartupError
from uvicorn_testserver._core.settings import ServerSettings
from uvicorn_testserver._plugin.run_files import POLL, alive, live_users, read_json, tail, write_atomically
from uvicorn_testserver._plugin.shared_server import SharedServer, SharedView

__all__ = ["SharedRun", "owns_the_run", "run_directory"]


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


class SharedRun:
    """This pytest process's part in the run's shared server: registration, attaching, and per-test reading."""

    def __init__(self, directory: Path, *, owner: bool) -> None:
        self.directory = directory
        self.owner = owner  # the run's first pytest process (xdist's controller): it ends the server, last
        self.server: SharedServer | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
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

        served = {key: value for key, value in options.items() if key not in ("mode", "ssl")}
        settings = ServerSettings.build(app, mode="process", options=served)  # checked here, as every face's
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
        self.server = SharedServer(SharedView(self.directory, settings, info), options)
        return self.server

    def _live_server(self) -> dict[str, Any] | None:
        info = read_json(self.directory / "server.json")
        if info is not None and alive(info["keeper"]):
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
        failed = read_json(self.directory / "failed.json")
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
                [sys.executable, "-m", "uvicorn_testserver._plugin.keeper", str(self.directory)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is for the workers; they stop it
            )
        deadline = time.monotonic() + startup_timeout + 5  # the keeper enforces startup_timeout itself
        while time.monotonic() < deadline:
            info = read_json(self.directory / "server.json")
            if info is not None:
                return info
            failed = read_json(self.directory / "failed.json")
            if failed is None and self._keeper.poll() is not None:
                failed = {"reason": f"the keeper process exited with {self._keeper.returncode}"}
                write_atomically(self.directory / "failed.json", json.dumps(failed))
            if failed is not None:
                self._reap_keeper()
                raise self._start_failure(spec, failed)
            time.sleep(POLL)
        self._stop_keeper()
        raise _startup_error(
            f"uvicorn server for {spec['app']!r} shared by this run was not ready within "
            f"startup_timeout={startup_timeout}s; the keeper process was stopped.{self._keeper_output()}",
            reason="not ready in time",
            app=spec["app"],
        )

    def _keeper_output(self) -> str:
        text = tail(self.directory / "keeper.out", 20)
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

    # -- the end of this process's session --

    def leave(self, timeout: float) -> None:
        """Unregister. The owner, the run's first pytest process, then waits (up to `timeout`) for the others
        to leave, stops the keeper, waits for it and removes the directory: when pytest returns, nothing of the
        run's server is left. (A worker that crashed leaves no user behind: dead processes do not count.)"""
        self._user.unlink(missing_ok=True)
        if not self.owner:
            return
        deadline = time.monotonic() + timeout
        while live_users(self.directory) and time.monotonic() < deadline:
            time.sleep(POLL / 5)
        with self._lock(max(0.0, deadline - time.monotonic())):
            info = read_json(self.directory / "server.json")
            if info is not None and alive(info["keeper"]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(info["keeper"], signal.SIGTERM)  # it stops the server, then exits
                _wait_gone(info["keeper"], max(1.0, deadline - time.monotonic()), self._keeper)
                if alive(info["keeper"]):  # its stop overran: the server's child ends when its channel closes
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(info["keeper"], signal.SIGKILL)
                    _wait_gone(info["keeper"], 5.0, self._keeper)
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


# -- helpers ------------------------------------------------------------------------------------------


def _startup_error(message: str, *, reason: str, app: str) -> ServerStartupError:
    error = ServerStartupError(message, app=app)
    error.reason = reason
    return error


def _wait_gone(pid: int, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.pid == pid:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(POLL / 5)

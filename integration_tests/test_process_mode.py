"""mode="process": the app in a child Python process, with the thread mode's guarantees."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from apps import Baseline, hello_app
from uvicorn_testserver import (
    ChildAppError,
    ProcessServer,
    ServerExceptionsError,
    ServerShutdownError,
    ServerStartupError,
    UvicornTestServer,
)

HERE = Path(__file__).resolve().parent


def process_gone(pid: int | None) -> bool:
    """True once `pid` has exited (a zombie waiting for init to reap it counts as exited).

    For a process that is not our child; for our own, ``Popen.poll()`` is exact (a
    multi-threaded process shows as a zombie while its other threads still exit).
    """
    if pid is None:
        raise AssertionError("the server never started a child process")
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def wait_until_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# -- serving ---------------------------------------------------------------------------------


def test_mode_process_is_the_same_class_in_another_mode() -> None:
    server = UvicornTestServer("apps_process:app", mode="process")
    assert type(server) is UvicornTestServer
    assert server.mode == "process"
    assert repr(server) == "<UvicornTestServer mode=process app='apps_process:app' 127.0.0.1:? pid=None stopped>"


def test_a_process_server_refuses_mode_thread() -> None:
    with pytest.raises(ValueError, match=r"ProcessServer always runs the app in a child process"):
        ProcessServer("apps_process:app", mode="thread")  # type: ignore[call-arg]  # refused at run time too


def test_the_app_runs_in_a_child_process_with_its_own_module_state() -> None:
    with ProcessServer("apps_process:app") as server:
        first = requests.get(server.url("/"), timeout=30).json()
        second = requests.get(server.url("/"), timeout=30).json()
        assert first["pid"] == server.pid != os.getpid()
        assert (first["hits"], second["hits"]) == (1, 2)
        assert server.is_running
    assert not server.is_running
    assert server.returncode == 0


def test_factory_env_and_cwd_reach_the_child(tmp_path: Path) -> None:
    server = UvicornTestServer(
        "apps_process:create_app", mode="process", factory=True, env={"APP_GREETING": "hi from env"}, cwd=tmp_path
    )
    with server:
        answer = requests.get(server.url("/"), timeout=30).json()
    assert answer["greeting"] == "hi from env"
    assert answer["cwd"] == str(tmp_path)


def test_child_output_and_log_are_captured() -> None:
    with ProcessServer("apps_process:app", log_level="info") as server:
        requests.get(server.url("/"), timeout=30).raise_for_status()
    assert f"child {server.pid} starting" in server.output
    messages = [record.getMessage() for record in server.log.records]
    assert "Application startup complete." in messages
    assert any('"GET / HTTP/1.1" 200' in message for message in messages)


def test_websockets_reach_the_child() -> None:
    with UvicornTestServer("apps_process:app", mode="process") as server, server.websocket_connect("/ws") as ws:
        ws.send("across the process boundary")
        assert ws.recv(timeout=30) == "across the process boundary"


def test_a_handler_that_blocks_the_child_loop_leaves_the_test_process_free() -> None:
    with UvicornTestServer("apps_process:app", mode="process", health_path="/") as server:
        assert requests.get(server.url("/block"), params={"seconds": "0.3"}, timeout=30).text == "blocked"


def test_restart_serves_a_fresh_child_on_the_same_port() -> None:
    server = ProcessServer("apps_process:app")
    with server:
        port, first_pid = server.port, server.pid
        assert requests.get(server.url("/"), timeout=30).json()["hits"] == 1
    with server:
        assert (server.port, requests.get(server.url("/"), timeout=30).json()["hits"]) == (port, 1)
        assert server.pid != first_pid


def test_start_and_stop_leave_no_process_thread_or_fd_behind() -> None:
    with ProcessServer("apps_process:app"):  # warm imports so the baseline is steady
        pass
    baseline = Baseline()
    with ProcessServer("apps_process:app") as server:
        requests.get(server.url("/"), timeout=30).raise_for_status()
        pid = server.pid
    assert process_gone(pid)
    baseline.assert_restored(wait=2.0)


def test_lifespan_shutdown_runs_in_the_child_on_stop(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown.txt"
    with ProcessServer("apps_process:app", env={"APP_SHUTDOWN_MARKER": str(marker)}) as server:
        pass
    assert marker.read_text() == f"lifespan shutdown ran in {server.pid}"


# -- misuse ----------------------------------------------------------------------------------


def test_an_app_object_is_refused_with_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match=r"mode='process' .* needs an import string such as 'package\.module:app'"):
        UvicornTestServer(hello_app, mode="process")


def test_an_option_that_is_not_json_is_refused() -> None:
    with pytest.raises(TypeError, match=r"ssl_context_factory=.* is not JSON-serialisable"):
        UvicornTestServer("apps_process:app", mode="process", ssl_context_factory=lambda *_: None)  # type: ignore[arg-type]


def test_env_and_cwd_in_thread_mode_are_refused() -> None:
    with pytest.raises(TypeError, match=r"env apply to mode='process' only"):
        UvicornTestServer(hello_app, env={"A": "1"})


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"mode must be 'thread' or 'process', not 'fork'"):
        UvicornTestServer("apps_process:app", mode="fork")  # type: ignore[arg-type]


# -- failed starts ---------------------------------------------------------------------------


def test_an_import_error_in_the_child_fails_the_start_at_once() -> None:
    server = ProcessServer("apps_process:missing", startup_timeout=120)
    started_at = time.monotonic()
    with pytest.raises(
        ServerStartupError, match=r"failed to start: cannot import the app 'apps_process:missing'.*\(exit code 3\)"
    ):
        server.start()
    assert time.monotonic() - started_at < 60, "a failing child must be reported at once, not at startup_timeout"
    assert server.returncode == 3
    assert not server.is_running


def test_a_lifespan_failure_carries_the_child_traceback_and_output() -> None:
    server = UvicornTestServer("apps_process:lifespan_fails_app", mode="process")
    with pytest.raises(
        ServerStartupError, match=r"lifespan startup raised RuntimeError\('no database in the child'\)"
    ) as info:
        server.start()
    assert "--- child process output (last lines) ---\nconnecting to the database..." in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, ChildAppError)
    assert cause.type_name == "RuntimeError"
    assert 'apps_process.py", line' in cause.traceback


def test_a_child_that_dies_during_start_is_reported_with_exit_code_and_output() -> None:
    server = UvicornTestServer("apps_process_dies:app", mode="process", startup_timeout=120)
    started_at = time.monotonic()
    with pytest.raises(ServerStartupError, match=r"exited with code 7 before it was ready") as info:
        server.start()
    assert time.monotonic() - started_at < 60, "a dead child must be reported at once, not at startup_timeout"
    assert "about to die during import" in str(info.value)


def test_a_start_that_hangs_times_out_and_the_child_is_reaped() -> None:
    server = ProcessServer("apps_process:startup_hangs_app", startup_timeout=0.8)
    with pytest.raises(ServerStartupError, match=r"was not ready within startup_timeout=0\.8s"):
        server.start()
    assert process_gone(server.pid)


def test_a_missing_working_directory_fails_the_start(tmp_path: Path) -> None:
    server = UvicornTestServer("apps_process:app", mode="process", cwd=tmp_path / "nowhere")
    with pytest.raises(ServerStartupError, match=r"cannot start the child process .*No such file or directory"):
        server.start()


def test_a_health_check_that_never_passes_fails_the_start() -> None:
    # A child slowed by a busy machine (stalls of a second or more happen on shared CI) still reaches it.
    server = ProcessServer("apps_process:app", health_path="/missing", startup_timeout=10)
    with pytest.raises(ServerStartupError, match=r"health check GET /missing did not answer 2xx .*404 Not Found"):
        server.start()
    assert process_gone(server.pid)


# -- errors while serving and stopping -------------------------------------------------------


def test_app_exceptions_come_back_as_child_app_errors_and_are_raised_at_stop() -> None:
    server = UvicornTestServer("apps_process:app", mode="process").start()
    try:
        assert requests.get(server.url("/boom"), timeout=30).status_code == 500
    finally:
        with pytest.raises(ServerExceptionsError, match=r"(?s)^ValueError: the child's.*raised 1 unhandled exception"):
            server.stop()
    [error] = server.errors
    assert isinstance(error, ChildAppError)
    assert (error.type_name, error.message) == ("ValueError", "the child's handler broke")


def test_a_child_that_crashes_while_serving_is_reported_at_stop() -> None:
    server = UvicornTestServer("apps_process:crashes_app", mode="process").start()
    try:
        with pytest.raises(requests.ConnectionError):
            requests.get(server.url("/crash"), timeout=30)
        deadline = time.monotonic() + 10
        while server.is_running and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not server.is_running
    finally:
        with pytest.raises(ServerShutdownError, match=r"exited with code 9 while serving(?s:.*)crashing hard"):
            server.stop()


def test_a_shutdown_that_blocks_the_loop_is_forced_by_the_child_itself() -> None:
    server = ProcessServer("apps_process:shutdown_blocks_app", shutdown_timeout=0.2).start()
    with pytest.raises(ServerShutdownError, match=r"did not stop within shutdown_timeout=0\.2s and forced its exit"):
        server.stop()
    assert server.returncode == 70
    assert process_gone(server.pid)


def test_a_child_that_holds_the_gil_and_ignores_sigterm_is_killed() -> None:
    server = ProcessServer("apps_process:ignores_sigterm_app", shutdown_timeout=0.2).start()
    with pytest.raises(ServerShutdownError, match=r"was sent SIGTERM, then SIGKILL; it has exited \(code -9\)"):
        server.stop()
    assert server.returncode == -signal.SIGKILL
    assert process_gone(server.pid)


# -- the test process going away -------------------------------------------------------------

PARENT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = {paths!r}
    from uvicorn_testserver import UvicornTestServer

    app, env = "apps_process:app", {{"APP_SHUTDOWN_MARKER": sys.argv[1]}}
    server = UvicornTestServer(app, mode="process", env=env).start()
    print(server.pid, flush=True)
    time.sleep(60)
    """
)


@contextlib.contextmanager
def parent_process(marker: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A test process that starts a process-mode server, prints the child's pid, then idles."""
    script = PARENT_SCRIPT.format(paths=[str(HERE)])
    with subprocess.Popen(
        [sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as parent:
        try:
            assert parent.stdout is not None
            line = parent.stdout.readline()
            assert line.strip().isdigit(), f"the parent script did not start its server: {line!r}"
            yield parent, int(line)
        finally:
            parent.kill()


def test_the_child_stops_when_the_test_process_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown.txt"
    with parent_process(marker) as (parent, child_pid):
        parent.kill()
        parent.wait(10)
        assert wait_until_gone(child_pid), f"child {child_pid} outlived its killed parent"
    assert marker.read_text() == f"lifespan shutdown ran in {child_pid}", "the orphaned child stopped gracefully"


def test_the_child_stops_when_the_test_process_is_interrupted(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown.txt"
    with parent_process(marker) as (parent, child_pid):
        parent.send_signal(signal.SIGINT)  # Ctrl-C: KeyboardInterrupt, then the atexit stop
        assert parent.wait(15) != 0
        assert wait_until_gone(child_pid)
    assert marker.read_text() == f"lifespan shutdown ran in {child_pid}"


def test_a_test_process_with_descriptors_above_1024_still_runs_children() -> None:
    # select() cannot wait on a descriptor past FD_SETSIZE; a busy test process may hold that many.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard limit on open files is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        with UvicornTestServer("apps_process:app", mode="process") as live:
            assert requests.get(live.url("/"), timeout=30).status_code == 200
        assert live.returncode == 0
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

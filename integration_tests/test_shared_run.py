"""``uvicorn_server_scope = run``: one server for the whole run, shared by every pytest-xdist worker.

Each test runs a pytest of its own (pytester, in a subprocess): the app counts its
lifespan startups in a file, answers with its pid, and every test records which worker
asked and which server pid answered.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

APP = """
    import os
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app):
        with open(os.environ["STARTS_FILE"], "a") as file:
            file.write(f"{os.getpid()}\\n")
        yield

    async def pid(request):
        return JSONResponse({"pid": os.getpid()})

    async def boom(request):
        raise ZeroDivisionError("division by zero")

    async def slow(request):
        import asyncio

        await asyncio.sleep(0.5)
        return JSONResponse({"slept": 0.5})

    app = Starlette(routes=[Route("/pid", pid), Route("/boom", boom), Route("/slow", slow)], lifespan=lifespan)
"""

INI = """
    [pytest]
    uvicorn_app = shared_app:app
    uvicorn_server_scope = run
    asyncio_default_fixture_loop_scope = function
"""

RECORDING_TESTS = """
    import json
    import os
    import urllib.request

    import pytest

    def ask(server):
        with urllib.request.urlopen(server.url("/pid"), timeout=30) as response:
            answer = json.load(response)["pid"]
        with open(os.environ["ASKED_FILE"], "a") as file:
            file.write(json.dumps({"worker": os.getpid(), "server": answer, "port": server.port}) + "\\n")
        return answer

    @pytest.mark.parametrize("n", range(24))
    def test_same_server(n, uvicorn_server):
        assert ask(uvicorn_server) == uvicorn_server.pid
"""


@pytest.fixture
def project(pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(shared_app=APP)
    pytester.makeini(INI)
    monkeypatch.setenv("STARTS_FILE", str(tmp_path / "starts"))
    monkeypatch.setenv("ASKED_FILE", str(tmp_path / "asked"))
    return pytester


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _asked(tmp_path: Path) -> list[dict[str, int]]:
    return [json.loads(line) for line in _lines(tmp_path / "asked")]


def _assert_gone(pids: set[int], ports: set[int]) -> None:
    """The server processes have exited and their ports are free as soon as pytest has returned."""
    assert not [pid for pid in pids if _alive(pid)], "the shared server outlived the run"
    for port in ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still accepts connections"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent has not collected it yet.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def _no_run_directories_left(before: set[str]) -> None:
    import tempfile

    left = {p.name for p in Path(tempfile.gettempdir()).glob("uvicorn-testserver-run-*")} - before
    assert not left, f"coordination directories left behind: {left}"


def _run_directories() -> set[str]:
    import tempfile

    return {p.name for p in Path(tempfile.gettempdir()).glob("uvicorn-testserver-run-*")}


def test_four_workers_share_one_server_started_once(project: pytest.Pytester, tmp_path: Path) -> None:
    before = _run_directories()
    project.makepyfile(test_shared=RECORDING_TESTS)
    result = project.runpytest_subprocess("-n", "4")
    result.assert_outcomes(passed=24)
    starts = _lines(tmp_path / "starts")
    assert len(starts) == 1, f"the app started {len(starts)} times"
    asked = _asked(tmp_path)
    assert {entry["server"] for entry in asked} == {int(starts[0])}
    assert len({entry["worker"] for entry in asked}) > 1, "the tests ran on one worker only"
    _assert_gone({int(starts[0])}, {entry["port"] for entry in asked})
    _no_run_directories_left(before)


def test_without_xdist_it_is_an_ordinary_session_server(project: pytest.Pytester, tmp_path: Path) -> None:
    project.makepyfile(test_shared=RECORDING_TESTS)
    result = project.runpytest_subprocess("-p", "no:xdist")
    result.assert_outcomes(passed=24)
    starts = _lines(tmp_path / "starts")
    assert len(starts) == 1
    assert {entry["server"] for entry in _asked(tmp_path)} == {int(starts[0])}
    _assert_gone({int(starts[0])}, {entry["port"] for entry in _asked(tmp_path)})


def test_a_killed_worker_leaves_nothing_behind(project: pytest.Pytester, tmp_path: Path) -> None:
    before = _run_directories()
    project.makepyfile(
        test_shared=RECORDING_TESTS
        + """
    def test_worker_dies(uvicorn_server):
        ask(uvicorn_server)
        os.kill(os.getpid(), 9)
    """
    )
    result = project.runpytest_subprocess("-n", "2")
    result.stdout.fnmatch_lines(["*test_worker_dies*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # xdist reports the crashed worker's test
    servers = {entry["server"] for entry in _asked(tmp_path)}
    starts = {int(pid) for pid in _lines(tmp_path / "starts")}
    assert servers <= starts
    _assert_gone(starts, {entry["port"] for entry in _asked(tmp_path)})
    _no_run_directories_left(before)


def test_ctrl_c_stops_the_run_and_the_shared_server(project: pytest.Pytester, tmp_path: Path) -> None:
    before = _run_directories()
    project.makepyfile(
        test_shared="""
        import json
        import os
        import time
        import urllib.request

        import pytest

        @pytest.mark.parametrize("n", range(2))
        def test_waits_for_ctrl_c(n, uvicorn_server):
            with urllib.request.urlopen(uvicorn_server.url("/pid"), timeout=30) as response:
                pid = json.load(response)["pid"]
            with open(os.environ["ASKED_FILE"], "a") as file:
                file.write(json.dumps({"worker": os.getpid(), "server": pid, "port": uvicorn_server.port}) + "\\n")
            time.sleep(120)
        """
    )
    # As a terminal does: Ctrl-C reaches every process of the foreground group (controller and workers).
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider"],
        cwd=project.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(_asked(tmp_path)) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert len(_asked(tmp_path)) == 2, "the tests never reached the shared server"
        os.killpg(process.pid, signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert b"KeyboardInterrupt" in output, output.decode()
    starts = {int(pid) for pid in _lines(tmp_path / "starts")}
    assert len(starts) == 1
    _assert_gone(starts, {entry["port"] for entry in _asked(tmp_path)})
    _no_run_directories_left(before)


def test_an_app_error_fails_the_test_that_caused_it(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_shared="""
        import urllib.error
        import urllib.request

        import pytest

        def get(server, path):
            try:
                urllib.request.urlopen(server.url(path), timeout=30).close()
            except urllib.error.HTTPError as error:
                return error.code
            return 200

        def test_fine(uvicorn_server):
            assert get(uvicorn_server, "/pid") == 200

        def test_hits_the_bug(uvicorn_server):
            assert get(uvicorn_server, "/boom") == 500

        @pytest.mark.uvicorn(expect_errors=ZeroDivisionError)
        def test_provokes_it_on_purpose(uvicorn_server):
            assert get(uvicorn_server, "/boom") == 500

        def test_fails_and_shows_the_log(uvicorn_server):
            get(uvicorn_server, "/pid")
            assert False, "the test's own failure"
        """
    )
    result = project.runpytest_subprocess("-p", "no:xdist", "-ra")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_hits_the_bug*",
            "ZeroDivisionError: division by zero in GET /boom",  # reported as a server of any other scope
        ]
    )
    output = result.stdout.str()
    assert "ERROR at teardown of test_provokes_it_on_purpose" not in output
    assert "uvicorn server log (the run's shared server" in output
    assert '"GET /pid HTTP/1.1" 200' in output


def test_a_failed_start_is_reported_once_to_every_worker(project: pytest.Pytester, tmp_path: Path) -> None:
    project.makepyfile(shared_app="raise RuntimeError('the app cannot import')")
    project.makepyfile(test_shared=RECORDING_TESTS)
    result = project.runpytest_subprocess("-n", "2")
    result.assert_outcomes(errors=24)
    result.stdout.fnmatch_lines(["*shared by this run failed to start*the app cannot import*"])
    assert "when another worker of this run started it" in result.stdout.str()


FACE_TESTS = """
    import json
    import threading
    import time
    import urllib.error
    import urllib.request

    import pytest

    from uvicorn_testserver import ChildAppError, ServerStateError

    def get(server, path, **kwargs):
        try:
            with urllib.request.urlopen(server.url(path), timeout=30, **kwargs) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def test_errors_and_expect_errors(uvicorn_server):
        assert uvicorn_server.is_running and uvicorn_server.mode == "run"
        with uvicorn_server.expect_errors(ZeroDivisionError) as raised:
            assert get(uvicorn_server, "/boom") == 500
        assert [(type(e), e.type_name) for e in raised] == [(ChildAppError, "ZeroDivisionError")]
        assert uvicorn_server.errors == []  # taken by expect_errors: this test does not fail for it
        with pytest.raises(AssertionError, match="expected the app of .* to raise ZeroDivisionError"):
            with uvicorn_server.expect_errors(ZeroDivisionError):
                assert get(uvicorn_server, "/pid") == 200

    def test_in_flight_and_wait_idle(uvicorn_server):
        slow = threading.Thread(target=get, args=(uvicorn_server, "/slow"))
        slow.start()
        deadline = time.monotonic() + 30
        while not uvicorn_server.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [line.partition(" (")[0] for line in uvicorn_server.in_flight()] == ["GET /slow"]
        uvicorn_server.wait_idle(30)
        assert uvicorn_server.in_flight() == []
        slow.join()
        uvicorn_server.settle()
        assert '"GET /slow HTTP/1.1" 200' in uvicorn_server.log.text

    def test_what_only_a_process_of_its_own_has(uvicorn_server):
        with pytest.raises(ServerStateError, match="has no ca_path: it does not use ssl=True"):
            uvicorn_server.ca_path
        with pytest.raises(ServerStateError, match="keeper"):
            uvicorn_server.output
        assert uvicorn_server.pid != __import__("os").getpid()
"""


def test_the_shared_server_is_a_face_like_the_others(project: pytest.Pytester) -> None:
    project.makepyfile(test_face=FACE_TESTS)
    result = project.runpytest_subprocess("-p", "no:xdist")
    result.assert_outcomes(passed=3)


def test_the_shared_server_over_tls(project: pytest.Pytester) -> None:
    project.makeini(INI + "    uvicorn_options = ssl=true\n")
    project.makepyfile(
        test_tls="""
        import ssl
        import urllib.request

        def test_https(uvicorn_server):
            assert uvicorn_server.base_url.startswith("https://")
            assert uvicorn_server.ca_path.is_file()
            with urllib.request.urlopen(uvicorn_server.url("/pid"), context=uvicorn_server.ssl_context) as response:
                assert response.status == 200
        """
    )
    result = project.runpytest_subprocess("-p", "no:xdist")
    result.assert_outcomes(passed=1)


def test_an_error_while_tests_on_two_workers_run_fails_neither(project: pytest.Pytester, tmp_path: Path) -> None:
    project.makepyfile(
        test_both=f"""
        import pathlib
        import time
        import urllib.error
        import urllib.request

        import pytest

        BARRIER = pathlib.Path({str(tmp_path)!r})

        def wait_for(name):
            deadline = time.monotonic() + 60
            while not (BARRIER / name).exists():
                assert time.monotonic() < deadline, f"{{name}} never came"
                time.sleep(0.01)

        @pytest.mark.parametrize("n", [0, 1])
        def test_at_the_same_time(n, uvicorn_server):
            (BARRIER / f"running-{{n}}").touch()
            wait_for(f"running-{{1 - n}}")
            if n == 0:
                try:
                    urllib.request.urlopen(uvicorn_server.url("/boom"), timeout=30)
                except urllib.error.HTTPError as error:
                    assert error.code == 500
                uvicorn_server.settle()
                (BARRIER / "raised").touch()
            else:
                wait_for("raised")
        """
    )
    result = project.runpytest_subprocess("-n", "2", "-W", "always")
    result.assert_outcomes(passed=2)
    output = result.stdout.str()
    assert "cannot tell which one caused it, so none of them fails for it" in output

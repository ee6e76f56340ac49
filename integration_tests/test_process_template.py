"""Process mode's children forked from a warm template process, with every guarantee of a spawned child.

Each behaviour a child has whichever way it was started is tested both ways
(``UVICORN_TESTSERVER_PROCESS_START=template``, the default, and ``spawn``); what only the
template does (one template per test process, its end with the test process, its
fallbacks) is tested on it. A test process of its own (a script, or pytester) is used
where the test process's one template must start fresh or die.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from uvicorn_testserver import ProcessServer, ServerShutdownError, ServerStartupError, UvicornTestServer

HERE = Path(__file__).resolve().parent
START_ENV = "UVICORN_TESTSERVER_PROCESS_START"
PRELOAD_ENV = "UVICORN_TESTSERVER_PRELOAD"
TEMPLATE_MODULE = "uvicorn_testserver._runners.template"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the template is used on Linux only")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def gone(pid: int, timeout: float = 15.0) -> bool:
    """True once `pid` has exited (a zombie counts), within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def whoami(server: UvicornTestServer) -> dict[str, object]:
    answer: dict[str, object] = requests.get(server.url("/"), timeout=30).json()
    return answer


@pytest.fixture(params=["template", "spawn"])
def start_method(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(START_ENV, request.param)
    with ProcessServer("apps_process:app"):  # the template (if any) has started before the test changes anything
        pass
    method: str = request.param
    return method


# -- the template is used --------------------------------------------------------------------


def test_children_are_forked_from_one_warm_template() -> None:
    with ProcessServer("apps_process:app") as first, ProcessServer("apps_process:app") as second:
        one, other = whoami(first), whoami(second)
    assert one["pid"] == first.pid != second.pid == other["pid"]
    template = one["ppid"]
    assert isinstance(template, int)
    assert template == other["ppid"] != os.getpid()
    assert TEMPLATE_MODULE in command_of(template)
    assert parent_of(template) == os.getpid()


def test_the_opt_out_spawns_each_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(START_ENV, "spawn")
    with ProcessServer("apps_process:app") as server:
        assert whoami(server)["ppid"] == os.getpid()
    assert server.returncode == 0


def test_an_unknown_start_method_is_refused_and_nothing_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(START_ENV, "forkserver")
    server = ProcessServer("apps_process:app")
    with pytest.raises(ValueError, match=r"UVICORN_TESTSERVER_PROCESS_START='forkserver' .* use 'template' .*'spawn'"):
        server.start()
    assert not server.is_running
    assert server.pid is None
    monkeypatch.delenv(START_ENV)
    with server:  # the same server starts once the variable is fixed
        assert whoami(server)["hits"] == 1


def test_a_variable_the_interpreter_reads_at_its_start_makes_the_start_spawn() -> None:
    with ProcessServer("apps_process:app") as warm:
        template = whoami(warm)["ppid"]
    with ProcessServer("apps_process:app", env={"PYTHONUVICORNTESTSERVERPROBE": "1"}) as server:
        assert whoami(server)["ppid"] == os.getpid() != template
    with ProcessServer("apps_process:app") as server:
        assert whoami(server)["ppid"] == template  # the next start uses the template again


# -- what the child gets, either way ---------------------------------------------------------


def test_env_changed_after_the_template_started_reaches_the_child(
    start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_GREETING", "set after the template started")
    monkeypatch.setenv("APP_REMOVED", "here")
    with ProcessServer("apps_process:app") as server:
        assert whoami(server)["greeting"] == "set after the template started"
    monkeypatch.delenv("APP_REMOVED")
    with ProcessServer("apps_process:app", env={"APP_ADDED": "by env="}) as server:
        environ = requests.get(server.url("/environ"), timeout=30).json()["environ"]
    assert "APP_REMOVED" not in environ
    assert environ["APP_ADDED"] == "by env="
    assert environ["APP_GREETING"] == "set after the template started"
    assert {name: environ[name] for name in os.environ if name in environ} == {**os.environ}


def test_cwd_and_sys_path_of_the_start_reach_the_child(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "late"
    package.mkdir()
    (package / "late_app.py").write_text(
        textwrap.dedent(
            """
            import json, os, sys

            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                body = json.dumps([os.getcwd(), sys.path[0], __file__]).encode()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})
            """
        )
    )
    monkeypatch.syspath_prepend(str(package))  # after the template started: only this start knows it
    workdir = tmp_path / "work"
    workdir.mkdir()
    with UvicornTestServer("late_app:app", mode="process", cwd=workdir, lifespan="off") as server:
        cwd, first_entry, module_file = requests.get(server.url("/"), timeout=30).json()
    assert cwd == first_entry == str(workdir)  # as `python -m` puts its working directory first
    assert module_file == str(package / "late_app.py")


def test_the_child_is_in_a_session_of_its_own(start_method: str) -> None:
    with ProcessServer("apps_process:app") as server:
        answer = whoami(server)
    assert answer["sid"] == server.pid != os.getsid(0)


def test_a_missing_working_directory_fails_the_start_either_way(start_method: str, tmp_path: Path) -> None:
    server = ProcessServer("apps_process:app", cwd=tmp_path / "nowhere")
    with pytest.raises(ServerStartupError, match=r"cannot start the child process .*No such file or directory"):
        server.start()
    assert not server.is_running


def test_the_real_signal_reaches_the_serving_process(start_method: str, tmp_path: Path) -> None:
    marker = tmp_path / "shutdown.txt"
    server = ProcessServer("apps_process:app", env={"APP_SHUTDOWN_MARKER": str(marker)}).start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # as a process manager would: uvicorn's own handler stops it
    deadline = time.monotonic() + 15
    while server.is_running and time.monotonic() < deadline:  # exact: /proc shows Z before its threads ended
        time.sleep(0.01)
    assert not server.is_running
    with pytest.raises(ServerShutdownError, match=r"exited with code 0 while serving, before stop\(\) asked it to"):
        server.stop()
    assert marker.read_text() == f"lifespan shutdown ran in {pid}"
    assert server.returncode == 0


# -- a test process of its own: the template's start, fallback and end ----------------------

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, urllib.request
    sys.path[:0] = {paths!r}
    from uvicorn_testserver import ProcessServer

    def ppid(server):
        with urllib.request.urlopen(server.url("/"), timeout=30) as response:
            return json.load(response)["ppid"]

    {body}
    """
)


def run_script(body: str, *, env: dict[str, str] | None = None, timeout: float = 120) -> dict[str, object]:
    """Run `body` in a Python process of its own; return the JSON object it prints last."""
    script = SCRIPT.format(paths=[str(HERE)], body=textwrap.dedent(body))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return answer


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("no_such_module", r"importing 'no_such_module' from UVICORN_TESTSERVER_PRELOAD raised ModuleNotFoundError"),
        ("apps_starts_a_thread", r"runs 2 threads, and forking a process with threads is unsafe"),
        ("apps_dies_at_import", r"exited with code 3 as it started; it printed: the preload gives up \| for good"),
    ],
)
def test_a_template_that_cannot_be_used_falls_back_to_spawn_with_one_warning(
    module: str, reason: str, tmp_path: Path
) -> None:
    (tmp_path / "apps_starts_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    )
    (tmp_path / "apps_dies_at_import.py").write_text(
        "import os, sys\nprint('the preload gives up\\nfor good', file=sys.stderr, flush=True)\nos._exit(3)\n"
    )
    answer = run_script(
        """
        runs = []
        for _ in range(2):
            with ProcessServer("apps_process:app") as server:
                warnings = [r.getMessage() for r in server.log.records if r.name == "uvicorn_testserver"]
                runs.append({"ppid": ppid(server), "warnings": warnings})
        print(json.dumps({"pid": os.getpid(), "runs": runs}))
        """,
        env={PRELOAD_ENV: module, "PYTHONPATH": str(tmp_path)},
    )
    runs = answer["runs"]
    assert isinstance(runs, list)
    assert [run["ppid"] for run in runs] == [answer["pid"]] * 2  # both spawned
    [warning] = runs[0]["warnings"]
    assert "spawns a fresh interpreter for each child from now on" in warning
    assert f"Set {START_ENV}=spawn" in warning
    assert re.search(reason, warning), warning
    assert runs[1]["warnings"] == []  # said once


def test_a_start_does_not_wait_long_for_a_template_still_importing(tmp_path: Path) -> None:
    (tmp_path / "apps_slow_import.py").write_text("import time\ntime.sleep(4)\n")
    answer = run_script(
        """
        with ProcessServer("apps_process:app", startup_timeout=2) as first:  # waits 1 s for the template
            spawned = ppid(first)
        with ProcessServer("apps_process:app") as second:  # waits until it is ready
            forked = ppid(second)
        records = first.log.records + second.log.records
        warnings = [r.getMessage() for r in records if r.name == "uvicorn_testserver"]
        print(json.dumps({"pid": os.getpid(), "spawned": spawned, "forked": forked, "warnings": warnings}))
        """,
        env={PRELOAD_ENV: "apps_slow_import", "PYTHONPATH": str(tmp_path)},
    )
    assert answer["spawned"] == answer["pid"] != answer["forked"]
    assert answer["warnings"] == []  # a slow template is no failure


def test_concurrent_starts_each_wait_their_own_time_for_a_template_still_importing(tmp_path: Path) -> None:
    # One after the other, the second would wait 2 s for its turn, then its own 2 s, and miss its deadline.
    (tmp_path / "apps_slow_import.py").write_text("import time\ntime.sleep(8)\n")
    answer = run_script(
        """
        import concurrent.futures

        def start(_):
            with ProcessServer("apps_process:app", startup_timeout=4) as server:  # waits 2 s for the template
                return ppid(server)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # a start that missed its deadline raises here
            runs = list(pool.map(start, range(2)))
        print(json.dumps({"pid": os.getpid(), "runs": runs}))
        """,
        env={PRELOAD_ENV: "apps_slow_import", "PYTHONPATH": str(tmp_path)},
    )
    runs = answer["runs"]
    assert isinstance(runs, list)
    assert runs == [answer["pid"]] * 2  # both spawned, neither failed


def test_a_template_killed_under_its_children_leaves_them_stoppable_then_spawn() -> None:
    answer = run_script(
        """
        import signal, time
        first = ProcessServer("apps_process:app").start()
        template = ppid(first)
        os.kill(template, signal.SIGKILL)
        while open(f"/proc/{template}/stat").read().split(")")[-1].split()[0] != "Z":
            time.sleep(0.01)
        first.stop()  # signalled through its pidfd; it said it stopped, its exit code went with the template
        with ProcessServer("apps_process:app") as second:
            spawned = ppid(second) == os.getpid()
            warnings = [r.getMessage() for r in second.log.records if r.name == "uvicorn_testserver"]
        print(json.dumps({"first": first.pid, "spawned": spawned, "warnings": warnings}))
        """
    )
    assert answer["spawned"] is True
    first = answer["first"]
    assert isinstance(first, int)
    assert gone(first, timeout=0)  # exited (init may not have reaped it yet)
    warnings = answer["warnings"]
    assert isinstance(warnings, list)
    assert len(warnings) == 1
    assert "it has exited (code -9)" in warnings[0]


def test_the_template_and_children_end_when_a_script_exits_without_stopping() -> None:
    answer = run_script(
        """
        server = ProcessServer("apps_process:app").start()
        print(json.dumps({"child": server.pid, "template": ppid(server)}))
        """
    )
    child, template = answer["child"], answer["template"]
    assert isinstance(child, int)
    assert isinstance(template, int)
    assert gone(template), f"template {template} outlived its test process"
    assert gone(child), f"child {child} outlived its test process"


def test_the_template_ends_when_the_test_process_is_killed(tmp_path: Path) -> None:
    script = SCRIPT.format(
        paths=[str(HERE)],
        body=textwrap.dedent(
            """
            import time
            server = ProcessServer("apps_process:app", env={"APP_SHUTDOWN_MARKER": sys.argv[1]}).start()
            print(json.dumps({"child": server.pid, "template": ppid(server)}), flush=True)
            time.sleep(60)
            """
        ),
    )
    marker = tmp_path / "shutdown.txt"
    with subprocess.Popen(
        [sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as parent:
        try:
            assert parent.stdout is not None
            pids = json.loads(parent.stdout.readline())
            parent.kill()
            parent.wait(10)
            assert gone(pids["template"]), "the template outlived its killed test process"
            assert gone(pids["child"]), "the child outlived its killed test process"
        finally:
            parent.kill()
    assert marker.read_text() == f"lifespan shutdown ran in {pids['child']}", "the orphaned child stopped gracefully"


def test_nothing_is_left_when_a_pytest_run_ends(pytester: pytest.Pytester) -> None:
    pids = pytester.path / "pids.json"
    pytester.makepyfile(
        test_uses_process_mode=f"""
            import json, urllib.request
            from uvicorn_testserver import ProcessServer

            def test_serves():
                with ProcessServer("apps_process:app") as server:
                    with urllib.request.urlopen(server.url("/"), timeout=30) as response:
                        answer = json.load(response)
                with open({str(pids)!r}, "w") as file:
                    json.dump({{"child": server.pid, "template": answer["ppid"]}}, file)
        """
    )
    pytester.makeini(f"[pytest]\npythonpath = {HERE}\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    answer = json.loads(pids.read_text())
    assert gone(answer["template"]), "the template outlived the pytest run"
    assert gone(answer["child"])

"""Coverage of the app in every mode: ``pytest --cov`` counts the lines the live server ran.

Thread and loop mode run the app in the test process, where coverage already traces.
A process-mode child measures with the test process's own configuration, and its data
is merged into the report, with no setting by the user.
"""

from __future__ import annotations

import re

import pytest

# Every statement of `served` runs only when the server answers a request: the test never calls it.
APP = """
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await served(send)

    async def served(send):
        body = b"counted"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
"""

TESTS = """
    import urllib.request

    import anyio
    import pytest

    from uvicorn_testserver import AsyncTestServer, UvicornTestServer

    def get(url):
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    @pytest.mark.parametrize("mode", ["thread", "process"])
    def test_sync(mode):
        with UvicornTestServer("served_app:app", mode=mode) as server:
            assert get(server.url("/")) == b"counted"

    @pytest.fixture
    def anyio_backend():
        return "asyncio"

    @pytest.mark.anyio
    async def test_loop():
        async with AsyncTestServer("served_app:app", mode="loop") as server:
            assert await anyio.to_thread.run_sync(get, server.url("/")) == b"counted"
"""


def _covered(output: str) -> tuple[int, int]:
    match = re.search(r"^served_app\.py\s+(\d+)\s+(\d+)\s+\d+%", output, flags=re.MULTILINE)
    assert match, "no coverage row for served_app.py:\n" + output
    return int(match[1]), int(match[2])


@pytest.mark.parametrize("mode", ["thread", "loop", "process", "process-spawn"])
def test_the_live_servers_lines_are_covered_in_each_mode(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    if mode == "process-spawn":  # a child in a fresh interpreter, not forked from the template
        monkeypatch.setenv("UVICORN_TESTSERVER_PROCESS_START", "spawn")
        mode = "process"
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(served_app=APP, test_served=TESTS)
    selected = {"thread": "test_sync[thread]", "process": "test_sync[process]", "loop": "test_loop"}[mode]
    result = pytester.runpytest_subprocess(
        "--cov=served_app", "--cov-report=term-missing", "-W", "error", "-p", "anyio", "-k", selected
    )
    result.assert_outcomes(passed=1)
    statements, missed = _covered(result.stdout.str())
    assert (statements, missed) == (statements, 0), result.stdout.str()
    assert "never imported" not in result.stdout.str() + result.stderr.str()


def test_a_preloaded_app_module_is_still_measured_from_its_import(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While coverage measures, the template imports none of the user's modules: the child imports the app.
    monkeypatch.setenv("UVICORN_TESTSERVER_PRELOAD", "served_app")
    pytester.makepyfile(served_app=APP, test_served=TESTS)
    result = pytester.runpytest_subprocess(
        "--cov=served_app", "--cov-report=term-missing", "-k", "test_sync and process"
    )
    result.assert_outcomes(passed=1)
    assert _covered(result.stdout.str())[1] == 0, result.stdout.str()


def test_process_mode_is_covered_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(served_app=APP, test_served=TESTS)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--cov=served_app", "--cov-report=term-missing", "-p", "anyio", "-k", "process"
    )
    result.assert_outcomes(passed=1)
    assert _covered(result.stdout.str())[1] == 0, result.stdout.str()


def test_without_coverage_nothing_imports_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        child_app="""
            import sys

            async def app(scope, receive, send):
                assert scope["type"] == "http"
                body = str(sorted(name for name in sys.modules if name.split(".")[0] == "coverage")).encode()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})
        """,
        test_child="""
            import sys
            import urllib.request

            from uvicorn_testserver import UvicornTestServer

            def test_neither_process_imports_coverage():
                with UvicornTestServer("child_app:app", mode="process", lifespan="off") as server:
                    with urllib.request.urlopen(server.url("/"), timeout=30) as response:
                        assert response.read() == b"[]"  # the child
                assert "coverage" not in sys.modules  # the test process
        """,
    )
    result = pytester.runpytest_subprocess("-p", "no:cov")
    result.assert_outcomes(passed=1)

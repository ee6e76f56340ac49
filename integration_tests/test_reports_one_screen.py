"""A failure reads in one screen: the cause once, its place once, the next step once.

Counted on real pytest runs with pytest-asyncio loaded, as users have it (its fixture
wrapper used to be shown as the place a start failed), at pytest's default 80 columns.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

APP = """
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def divide(request):
    return PlainTextResponse(str(1 / int(request.query_params["by"])))


app = Starlette(routes=[Route("/divide", divide)])


@asynccontextmanager
async def failing(app):
    raise RuntimeError("database is down")
    yield


fails_app = Starlette(lifespan=failing)
"""


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")


def run(pytester: pytest.Pytester, app: str, tests: str) -> pytest.RunResult:
    pytester.makeini(f"[pytest]\nuvicorn_app = {app}\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(myapp=APP, test_it=tests)
    result = pytester.runpytest_subprocess("-ra", "-p", "no:cacheprovider")
    assert "asyncio-" in result.stdout.str(), "pytest-asyncio is loaded, as in the docs' setup"
    return result


def errors_section(result: pytest.RunResult) -> list[str]:
    text = result.stdout.str()
    return text.split(" ERRORS ")[1].split("short test summary info")[0].splitlines()


@pytest.mark.parametrize("app", ["nosuch:app", "myapp:fails_app"])
def test_a_failed_start_is_one_short_error_per_test(pytester: pytest.Pytester, app: str) -> None:
    tests = "\n".join(f"def test_{n}(uvicorn_server):\n    pass\n" for n in range(5))
    result = run(pytester, app, tests)
    result.assert_outcomes(errors=5)
    lines = errors_section(result)
    assert len(lines) <= 5 * 40, f"{len(lines)} lines for 5 failed starts"
    starts = [index for index, line in enumerate(lines) if "ERROR at setup" in line]
    first = "\n".join(lines[starts[0] : starts[1]])
    assert len(first.splitlines()) <= 40, first
    assert "pytest_asyncio" not in first, first
    assert "importlib" not in first, first
    assert first.splitlines()[1].startswith(f"uvicorn server for '{app}' on 127.0.0.1:"), first  # the error first
    result.stdout.fnmatch_lines(["ERROR test_it.py::test_0 - ServerStartupError: *"])
    if app == "myapp:fails_app":
        assert first.count('raise RuntimeError("database is down")') == 1, first  # the app's raising line, once


def test_an_app_error_is_reported_once_and_named_in_the_short_summary(pytester: pytest.Pytester) -> None:
    tests = """
import requests

def test_a(uvicorn_server):
    assert requests.get(uvicorn_server.url("/divide?by=0"), timeout=30).status_code == 500

def test_b(uvicorn_server):
    assert requests.get(uvicorn_server.url("/divide?by=0"), timeout=30).status_code == 400
"""
    result = run(pytester, "myapp:app", tests)
    result.assert_outcomes(passed=1, failed=1, errors=1)  # test_a passes, then fails at teardown
    text = result.stdout.str()
    # The app's raising line once per failing test, whatever else captures the log.
    assert text.count('return PlainTextResponse(str(1 / int(request.query_params["by"])))') == 2, text
    result.stdout.fnmatch_lines(
        [
            "ERROR test_it.py::test_a - ZeroDivisionError: division by zero in GET /divide",
            "FAILED test_it.py::test_b - AssertionError: assert 500 == 400",
        ]
    )
    assert text.count("expect_errors=ZeroDivisionError") == 1  # the next step, once
    assert "raise_server_exceptions=False" not in text


def test_a_failed_start_in_a_plain_script_prints_the_traceback_once(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "script.py").write_text(
        'from uvicorn_testserver import UvicornTestServer\n\nUvicornTestServer("myapp:fails_app").start()\n'
    )
    result = subprocess.run(
        [sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    assert result.stderr.count('raise RuntimeError("database is down")') == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1].endswith("Application startup failed. Exiting.")

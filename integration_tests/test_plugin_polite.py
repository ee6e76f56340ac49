"""Installed but unused, the plugin costs nothing and breaks nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_loading_the_plugin_imports_no_server_machinery() -> None:
    code = (
        "import sys, uvicorn_testserver.plugin\n"
        "heavy = ('uvicorn', 'ssl', 'anyio', 'aiohttp', 'websockets', 'uvicorn_testserver._faces.sync_server')\n"
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


def test_a_broken_uvicorn_fails_only_the_tests_that_use_a_fixture(pytester: pytest.Pytester) -> None:
    # What an unsupported uvicorn looks like to the harness: its import fails.
    pytester.makepyfile(uvicorn="raise ImportError(\"cannot import name 'LOOP_FACTORIES' from 'uvicorn.config'\")")
    pytester.makeini("[pytest]\nuvicorn_app = myapp:app\npythonpath = .\n")
    pytester.makepyfile(
        test_a="""
            def test_without_a_server():
                assert 1 + 1 == 2

            def test_with_a_server(fresh_uvicorn_server):
                pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "E *RuntimeError: uvicorn-testserver's fixtures cannot load: uvicorn-testserver needs 'uvicorn*', and "
            "uvicorn * is installed (cannot import name 'LOOP_FACTORIES'*). Install a supported release: pip install*"
        ]
    )


def test_an_unsupported_uvicorn_is_named_on_the_first_import(tmp_path: Path) -> None:
    (tmp_path / "uvicorn.py").write_text(
        "raise ImportError(\"cannot import name 'LOOP_FACTORIES' from 'uvicorn.config'\")"
    )
    code = "import uvicorn_testserver; uvicorn_testserver.UvicornTestServer"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60
    )
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: uvicorn-testserver needs 'uvicorn"), result.stderr
    assert "is installed (cannot import name 'LOOP_FACTORIES'" in last


def test_a_failing_test_that_used_no_server_shows_no_plugin_frame(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
            def test_fails():
                assert 1 + 1 == 3
        """
    )
    result = pytester.runpytest_subprocess("--tb=long")
    result.assert_outcomes(failed=1)
    assert "uvicorn_testserver" not in result.stdout.str().split("FAILURES")[1]

"""Servers a program forgets to stop are stopped at interpreter exit, lifespan shutdown included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def test_running_server_is_stopped_at_interpreter_exit(tmp_path: Path) -> None:
    marker = tmp_path / "shutdown-ran"
    script = tmp_path / "forgetful.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import contextlib, pathlib, requests
            from starlette.applications import Starlette
            from uvicorn_testserver import UvicornTestServer

            @contextlib.asynccontextmanager
            async def lifespan(app):
                yield
                pathlib.Path({str(marker)!r}).write_text("stopped")

            server = UvicornTestServer(Starlette(lifespan=lifespan)).start()
            print(requests.get(server.url("/nothing"), timeout=30).status_code)
            # no stop(): the interpreter exits with the server running
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "404"
    assert marker.read_text() == "stopped"


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_running_server_nobody_holds_is_stopped_at_interpreter_exit(mode: str, tmp_path: Path) -> None:
    marker = tmp_path / "shutdown-ran"
    (tmp_path / "forgotten_app.py").write_text(
        textwrap.dedent(
            f"""
            import contextlib, pathlib
            from starlette.applications import Starlette

            @contextlib.asynccontextmanager
            async def lifespan(app):
                yield
                pathlib.Path({str(marker)!r}).write_text("stopped")

            app = Starlette(lifespan=lifespan)
            """
        )
    )
    script = tmp_path / "forgetful.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import gc, requests
            from uvicorn_testserver import UvicornTestServer

            def start_and_forget():
                server = UvicornTestServer("forgotten_app:app", mode={mode!r}, ssl=True).start()
                print(requests.get(server.url("/nothing"), verify=str(server.ca_path), timeout=30).status_code)

            start_and_forget()  # no reference is left, and no stop(): the server serves on until exit
            gc.collect()
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "404"
    assert marker.read_text() == "stopped"

"""Servers a program forgets to stop are stopped at interpreter exit, lifespan shutdown included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run_forgetful(tmp_path: Path, body: str) -> str:
    """Run `body` as a script beside ``forgotten_app:app``, whose lifespan shutdown writes ``shutdown-ran``;
    return what the script printed once it passed and that shutdown ran."""
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
    script.write_text(textwrap.dedent(body))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "stopped"
    return result.stdout.strip()


def test_running_server_is_stopped_at_interpreter_exit(tmp_path: Path) -> None:
    printed = run_forgetful(
        tmp_path,
        """
        import requests
        from forgotten_app import app
        from uvicorn_testserver import UvicornTestServer

        server = UvicornTestServer(app).start()
        print(requests.get(server.url("/nothing"), timeout=30).status_code)
        # no stop(): the interpreter exits with the server running
        """,
    )
    assert printed == "404"


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_running_server_nobody_holds_is_stopped_at_interpreter_exit(mode: str, tmp_path: Path) -> None:
    printed = run_forgetful(
        tmp_path,
        f"""
        import gc, requests
        from uvicorn_testserver import UvicornTestServer

        def start_and_forget():
            server = UvicornTestServer("forgotten_app:app", mode={mode!r}, ssl=True).start()
            print(requests.get(server.url("/nothing"), verify=str(server.ca_path), timeout=30).status_code)

        start_and_forget()  # no reference is left, and no stop(): the server serves on until exit
        gc.collect()
        """,
    )
    assert printed == "404"

"""Servers a program forgets to stop are stopped at interpreter exit, lifespan shutdown included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


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

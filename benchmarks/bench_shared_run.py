"""``pytest -n 4`` with one server for the whole run against one server per worker.

    uv run python benchmarks/bench_shared_run.py            # 5 runs of each (~1 minute)
    uv run python benchmarks/bench_shared_run.py --quick    # 2 runs of each

Writes a throwaway project whose app counts its lifespan startups in a file and takes
``--startup`` seconds to start (an app with expensive start-up, the case the shared server
is for), with 40 tests that each make a request to ``uvicorn_server``. Runs
``pytest -n 4`` with ``uvicorn_server_scope = run`` and with the default ``session``,
interleaved, and reports the median wall time of the pytest process and how often the app
started. Results also go to benchmarks/results/shared_run.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import print_table, write_json

APP = """
import asyncio
import os
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


@asynccontextmanager
async def lifespan(app):
    await asyncio.sleep(float(os.environ["STARTUP_SECONDS"]))
    with open(os.environ["STARTS_FILE"], "a") as file:
        file.write("started\\n")
    yield


async def hello(request):
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello)], lifespan=lifespan)
"""

TESTS = """
import urllib.request

import pytest


@pytest.mark.parametrize("n", range(40))
def test_request(n, uvicorn_server):
    with urllib.request.urlopen(uvicorn_server.url("/"), timeout=30) as response:
        assert response.read() == b"hello"
"""


def run(project: Path, scope: str, startup: float) -> tuple[float, int]:
    starts = project / f"starts-{scope}"
    starts.unlink(missing_ok=True)
    env = {**os.environ, "STARTS_FILE": str(starts), "STARTUP_SECONDS": str(startup)}
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "4"]
    command += ["-o", f"uvicorn_server_scope={scope}"]
    began = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"pytest failed with scope={scope}:\n{result.stdout}{result.stderr}")
    return elapsed, len(starts.read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 runs of each, a smoke run")
    parser.add_argument("--startup", type=float, default=1.0, help="seconds the app's lifespan startup takes")
    args = parser.parse_args()
    runs = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as directory:
        project = Path(directory)
        (project / "bench_app.py").write_text(textwrap.dedent(APP))
        (project / "test_requests.py").write_text(textwrap.dedent(TESTS))
        (project / "pytest.ini").write_text("[pytest]\nuvicorn_app = bench_app:app\n")
        times: dict[str, list[float]] = {"run": [], "session": []}
        starts: dict[str, list[int]] = {"run": [], "session": []}
        run(project, "session", args.startup)  # warm-up: bytecode, the page cache
        for round_number in range(runs):
            for scope in ("run", "session") if round_number % 2 == 0 else ("session", "run"):
                elapsed, started = run(project, scope, args.startup)
                times[scope].append(elapsed)
                starts[scope].append(started)
    rows = [
        [
            f"uvicorn_server_scope = {scope}",
            str(runs),
            f"{statistics.median(times[scope]):.2f}",
            f"{min(times[scope]):.2f}",
            f"{max(times[scope]):.2f}",
            "/".join(str(count) for count in sorted(set(starts[scope]))),
        ]
        for scope in ("run", "session")
    ]
    title = f"pytest -n 4, 40 tests using uvicorn_server, app startup {args.startup:g} s"
    print_table(title, ["scope", "runs", "median s", "min s", "max s", "app starts"], rows)
    write_json(
        "shared_run",
        {
            "startup_seconds": args.startup,
            "times": times,
            "starts": starts,
            "median_s": {scope: statistics.median(values) for scope, values in times.items()},
        },
    )


if __name__ == "__main__":
    main()

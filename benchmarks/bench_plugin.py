"""200 tests, each with a server of its own: the plugin's fresh_uvicorn_server against the pasted thread fixture.

    uv run python benchmarks/bench_plugin.py              # 3 runs of each (~3 minutes: the naive fixture is slow)
    uv run python benchmarks/bench_plugin.py --quick      # 1 run of 50 tests each, a smoke run
    uv run python benchmarks/bench_plugin.py --against c5c3e37 --runs 9 --no-naive   # the plugin, two revisions

Writes a throwaway project with two test files of the same tests: one uses the plugin's
``fresh_uvicorn_server``, the other a hand-written fixture (``uvicorn.Server`` in a thread,
poll ``started``, set ``should_exit``, join). Each file runs in its own ``pytest``
subprocess, the runs interleaved after one warm-up round; a third file without any server
measures pytest itself. Bytecode is cached in a temporary directory (``PYTHONPYCACHEPREFIX``)
as on a developer's machine, even where ``PYTHONDONTWRITEBYTECODE`` is set. Reported: median
wall times of the pytest process, the session time pytest prints, the per-test cost above bare
pytest, and the ratio. With ``--against REV`` the plugin's file also runs with that git revision's
``src/`` first on ``PYTHONPATH``, in the same rounds. Results also go to benchmarks/results/plugin.json.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import export_src, print_table, write_json

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def hello(request):
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello)])
"""

PLUGIN_TESTS = """
import pytest
import requests


@pytest.mark.parametrize("n", range({count}))
def test_fresh_server(n, fresh_uvicorn_server):
    assert requests.get(fresh_uvicorn_server.url("/"), timeout=5).text == "hello"
"""

NAIVE_TESTS = """
import socket
import threading
import time

import pytest
import requests
import uvicorn

from bench_app import app


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def naive_server():
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.001)
    yield f"http://127.0.0.1:{{port}}"
    server.should_exit = True
    thread.join()


@pytest.mark.parametrize("n", range({count}))
def test_fresh_server(n, naive_server):
    assert requests.get(naive_server + "/", timeout=5).text == "hello"
"""

BARE_TESTS = """
import pytest


@pytest.mark.parametrize("n", range({count}))
def test_nothing(n):
    pass
"""

INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""


def run_pytest(project: Path, test_file: str, count: int, *extra: str, src: Path | None = None) -> tuple[float, float]:
    """Run pytest on one file in a subprocess (the library from `src`, if given); return its wall time and the
    session time pytest printed.

    Exits if not every test passed.
    """
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, test_file]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(project / "pycache")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    session = re.search(rf"{count} passed in ([0-9.]+)s", result.stdout)
    if result.returncode != 0 or session is None:
        raise SystemExit(f"{test_file} did not pass:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, float(session.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of 50 tests each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--against", metavar="REV", help="also run the plugin's tests with this git revision")
    parser.add_argument("--no-naive", action="store_true", help="leave out the (slow) hand-written fixture")
    args = parser.parse_args()
    count, runs = (50, 1) if args.quick else (args.tests, args.runs)

    cases = ["plugin", *([] if args.no_naive else ["naive"]), "bare", *(["against"] if args.against else [])]
    timings: dict[str, list[float]] = {name: [] for name in cases}
    sessions: dict[str, list[float]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(prefix="bench-plugin-") as directory:
        project = Path(directory)
        other_src = export_src(args.against, project / "against") if args.against else None
        (project / "pytest.ini").write_text(INI)
        (project / "bench_app.py").write_text(APP)
        files = {"plugin": PLUGIN_TESTS, "naive": NAIVE_TESTS, "bare": BARE_TESTS}
        for name, source in files.items():
            (project / f"test_{name}.py").write_text(textwrap.dedent(source.format(count=count)).lstrip())
        for round_ in range(runs + 1):  # round 0 fills the bytecode cache and is not counted
            # The order turns every round, so that no case always follows the same one.
            for name in cases[round_ % len(cases) :] + cases[: round_ % len(cases)]:
                file, src = ("plugin", other_src) if name == "against" else (name, None)
                # The naive and bare runs leave the plugin out, as a project without it would.
                extra = ("--uvicorn-app=bench_app:app",) if file == "plugin" else ("-p", "no:uvicorn_testserver")
                wall, session = run_pytest(project, f"test_{file}.py", count, *extra, src=src)
                print(f"round {round_}/{runs} {name}: {wall:.2f}s (pytest: {session:.2f}s)", file=sys.stderr)
                if round_ > 0:
                    timings[name].append(wall)
                    sessions[name].append(session)

    median = {name: statistics.median(values) for name, values in timings.items()}
    median_session = {name: statistics.median(values) for name, values in sessions.items()}
    per_test_ms = {name: (median[name] - median["bare"]) / count * 1000 for name in cases if name != "bare"}
    labels = {
        "plugin": "fresh_uvicorn_server (plugin)",
        "naive": "naive thread fixture",
        "against": f"fresh_uvicorn_server at {args.against}",
    }
    print_table(
        f"{count} tests, each with its own server (median of {runs} run(s), wall time of the pytest process)",
        ["fixture", "wall time (s)", "pytest's session time (s)", "per test above bare pytest (ms)"],
        [
            *(
                [labels[name], median[name], median_session[name], per_test_ms[name]]
                for name in cases
                if name != "bare"
            ),
            ["no server (bare pytest)", median["bare"], median_session["bare"], "-"],
        ],
    )
    ratio = median["naive"] / median["plugin"] if "naive" in median else None
    if ratio is not None:
        print(f"\nThe naive fixture takes {ratio:.1f}x the plugin's wall time.")
    against_ratios = [this / other for this, other in zip(timings["plugin"], timings.get("against", []), strict=False)]
    if against_ratios:
        print(
            f"\nWall time, this checkout / {args.against}, per round: median {statistics.median(against_ratios):.2f} "
            f"(from {min(against_ratios):.2f} to {max(against_ratios):.2f})."
        )
    path = write_json(
        "plugin",
        {
            "tests": count,
            "runs": runs,
            "against": args.against,
            "wall_s": {name: [round(value, 3) for value in values] for name, values in timings.items()},
            "median_wall_s": {name: round(value, 3) for name, value in median.items()},
            "session_s": {name: [round(value, 3) for value in values] for name, values in sessions.items()},
            "median_session_s": {name: round(value, 3) for name, value in median_session.items()},
            "per_test_ms_above_bare": {name: round(value, 2) for name, value in per_test_ms.items()},
            "naive_over_plugin": round(ratio, 2) if ratio is not None else None,
            "this_over_against_per_round": [round(value, 3) for value in against_ratios],
        },
    )
    print(f"Results written to {path}")


if __name__ == "__main__":
    main()

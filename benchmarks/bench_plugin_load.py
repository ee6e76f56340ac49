"""What the installed plugin costs a suite that never uses it: pytest start-up with and without it.

    uv run python benchmarks/bench_plugin_load.py            # 20 runs of each, interleaved
    uv run python benchmarks/bench_plugin_load.py --runs 5   # a smoke run

Each run is a whole ``python -m pytest --collect-only -q`` process over one trivial test,
once as installed and once with ``-p no:uvicorn_testserver``, in turn. Reported: the
median wall time of each, and the median of the per-pair differences. Whole pytest runs vary by
tens of milliseconds here, more than the plugin costs, so the plugin's own share is also measured
directly: importing it in fresh interpreters that have pytest loaded already.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table

# As on a developer's machine: Python caches bytecode (with PYTHONDONTWRITEBYTECODE set, as in some
# containers, every run compiles every module from source again and the plugin's own share is noise).
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, env=ENV)
    return time.perf_counter() - started


IMPORT_ONLY = (
    "import importlib.metadata, pytest, time\n"
    "started = time.perf_counter()\n"
    "import uvicorn_testserver.plugin\n"
    "print(time.perf_counter() - started)"
)


def import_cost(runs: int) -> float:
    """Median seconds to import the plugin (and the package) in a fresh interpreter with pytest loaded."""
    command = [sys.executable, "-c", IMPORT_ONLY]
    subprocess.run(command, check=True, capture_output=True, env=ENV)  # write the bytecode
    return statistics.median(
        float(subprocess.run(command, check=True, capture_output=True, text=True, env=ENV).stdout) for _ in range(runs)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "test_plain.py").write_text("def test_plain():\n    assert True\n")
        base = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        with_plugin, without = [], []
        timed(base, cwd)  # warm the page cache and write the bytecode
        timed([*base, "-p", "no:uvicorn_testserver"], cwd)
        for _ in range(args.runs):
            with_plugin.append(timed(base, cwd))
            without.append(timed([*base, "-p", "no:uvicorn_testserver"], cwd))
    differences = [a - b for a, b in zip(with_plugin, without, strict=True)]
    imported = import_cost(args.runs)
    print_table(
        "pytest start-up of a suite that uses no fixture of the plugin (ms, medians)",
        ["runs", "with the plugin", "-p no:uvicorn_testserver", "difference (median of pairs)", "import alone"],
        [
            [
                args.runs,
                statistics.median(with_plugin) * 1000,
                statistics.median(without) * 1000,
                statistics.median(differences) * 1000,
                imported * 1000,
            ]
        ],
    )


if __name__ == "__main__":
    main()

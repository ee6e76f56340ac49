"""What the installed plugin costs a suite that never uses it: pytest start-up with and without it.

    uv run python benchmarks/bench_plugin_load.py            # 20 runs of each, interleaved
    uv run python benchmarks/bench_plugin_load.py --runs 5   # a smoke run

Each run is a whole ``python -m pytest --collect-only -q`` process over one trivial test,
once as installed and once with ``-p no:uvicorn_testserver``, in turn. Reported: the
median wall time of each, and the median of the per-pair differences.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "test_plain.py").write_text("def test_plain():\n    assert True\n")
        base = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        with_plugin, without = [], []
        timed(base, cwd)  # warm the page cache
        for _ in range(args.runs):
            with_plugin.append(timed(base, cwd))
            without.append(timed([*base, "-p", "no:uvicorn_testserver"], cwd))
    differences = [a - b for a, b in zip(with_plugin, without, strict=True)]
    print_table(
        "pytest start-up of a suite that uses no fixture of the plugin (ms, medians)",
        ["runs", "with the plugin", "-p no:uvicorn_testserver", "difference (median of pairs)"],
        [
            [
                args.runs,
                statistics.median(with_plugin) * 1000,
                statistics.median(without) * 1000,
                statistics.median(differences) * 1000,
            ]
        ],
    )


if __name__ == "__main__":
    main()

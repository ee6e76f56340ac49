"""Start+stop cycle per mode: this checkout against another git revision, interleaved round by round.

    uv run python benchmarks/bench_versions.py --against HEAD~3          # ~1 minute
    uv run python benchmarks/bench_versions.py --against main --quick    # a smoke run

Both versions run in worker processes of the same interpreter and environment (the
other revision's ``src/`` first on ``sys.path``), each asked in turn for a batch of
cycles of one mode, the order swapped every round so a trend in machine load favours
neither. A cycle is what a test pays: construct, start, stop (no request). Reported
per mode: each version's median of the per-round medians, and the median of the
per-round ratios this / other (below 1: this checkout is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import ROOT, Worker, export_src, loop_mode_cycles, print_table, sample, write_json

HERE = Path(__file__).resolve().parent
APP = "bench_versions_app:app"
BATCH = {"thread": 40, "loop": 40, "process": 2}


def worker() -> None:
    """Read ``MODE COUNT`` lines; answer each with the JSON list of cycle durations in seconds."""
    from uvicorn_testserver import UvicornTestServer

    loop = asyncio.new_event_loop()
    for line in sys.stdin:
        mode, count = line.split()
        if mode == "loop":
            durations = loop_mode_cycles(loop, APP, int(count))
        else:
            durations = sample(functools.partial(_cycle, UvicornTestServer, mode), int(count))
        print(json.dumps(durations), flush=True)


def _cycle(server_class: type[Any], mode: str) -> None:
    server_class(APP, mode=mode).start().stop()


def version_worker(src: Path) -> Worker:
    """A worker that imports the library from `src`."""
    return Worker([sys.executable, __file__, "--worker"], {"PYTHONPATH": os.pathsep.join([str(src), str(HERE)])})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="HEAD", help="the git revision to compare with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 rounds, for a smoke run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        other_src = export_src(args.against, Path(tmp))
        this, other = version_worker(ROOT / "src"), version_worker(other_src)
        try:
            medians: dict[str, dict[str, list[float]]] = {mode: {"this": [], "other": []} for mode in BATCH}
            for mode in BATCH:  # warm imports, thread pools and the child's page cache
                this.ask(f"{mode} 1")
                other.ask(f"{mode} 1")
            for round_number in range(rounds):
                for mode, count in BATCH.items():
                    order = [("this", this), ("other", other)]
                    for name, version in order if round_number % 2 == 0 else reversed(order):
                        medians[mode][name].append(statistics.median(version.ask(f"{mode} {count}")))
        finally:
            this.close()
            other.close()
    rows: list[list[Any]] = []
    for mode, by_version in medians.items():
        ratios = [a / b for a, b in zip(by_version["this"], by_version["other"], strict=True)]
        rows.append(
            [
                mode,
                rounds,
                statistics.median(by_version["this"]) * 1000,
                statistics.median(by_version["other"]) * 1000,
                statistics.median(ratios),
                min(ratios),
                max(ratios),
            ]
        )
    print_table(
        f"Start+stop cycle, this checkout against {args.against} (medians of per-round medians; lower is better)",
        ["mode", "rounds", "this ms", f"{args.against} ms", "ratio this/other", "min ratio", "max ratio"],
        rows,
    )
    path = write_json("versions", {"against": args.against, "per_round_medians_s": medians})
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()

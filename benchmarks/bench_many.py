"""Fifty servers at once: start-all and stop-all, one after the other vs from a thread pool.

    uv run python benchmarks/bench_many.py            # full run (~half a minute)
    uv run python benchmarks/bench_many.py --quick    # a smoke run

Each round builds 50 fresh `UvicornTestServer`s, starts them all, sends one request
through a chain of all 50 (each service calls the next with httpx, so every server
has served and holds keep-alive connections), then stops them all. Reported: medians
(p10/p90) in milliseconds over the rounds. Results also go to benchmarks/results/many.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from _common import print_table, summary, write_json
from uvicorn_testserver import UvicornTestServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration_tests"))
from apps_many import service_app  # the microservices of the many-servers tests

COUNT = 50
Action = Callable[[UvicornTestServer], object]
Strategy = Callable[[Action, list[UvicornTestServer]], None]


def sequential(action: Action, servers: list[UvicornTestServer]) -> None:
    for server in servers:
        action(server)


def pooled(workers: int) -> Strategy:
    def run(action: Action, servers: list[UvicornTestServer]) -> None:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(action, servers):
                pass

    return run


def one_round(strategy: Strategy) -> tuple[float, float, float]:
    peers: list[str] = []
    servers = [UvicornTestServer(service_app(i, peers)) for i in range(COUNT)]
    started = time.perf_counter()
    strategy(UvicornTestServer.start, servers)
    start_all = time.perf_counter() - started
    peers.extend(server.base_url for server in servers)
    started = time.perf_counter()
    path = httpx.get(servers[0].url("/chain"), timeout=30).raise_for_status().json()["path"]
    chain = time.perf_counter() - started
    if path != list(range(COUNT)):
        raise AssertionError(f"the chain answered {path}")
    started = time.perf_counter()
    strategy(UvicornTestServer.stop, servers)
    stop_all = time.perf_counter() - started
    return start_all, chain, stop_all


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 9
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    strategies = {"sequential": sequential, "pool of 8": pooled(8), "pool of 50": pooled(50)}
    one_round(sequential)  # warm up imports and protocol classes
    timings: dict[str, dict[str, list[float]]] = {
        name: {"start_all": [], "chain": [], "stop_all": []} for name in strategies
    }
    for _ in range(rounds):
        for name, strategy in strategies.items():  # interleaved, so machine noise hits all alike
            start_all, chain, stop_all = one_round(strategy)
            timings[name]["start_all"].append(start_all)
            timings[name]["chain"].append(chain)
            timings[name]["stop_all"].append(stop_all)
    stats = {name: {what: summary(values) for what, values in parts.items()} for name, parts in timings.items()}
    print_table(
        f"{COUNT} servers: start all, one request through the chain of {COUNT}, stop all (medians, lower is better)",
        ["strategy", "rounds", "start all ms", "per server ms", "chain ms", "stop all ms", "per server ms"],
        [
            [
                name,
                s["start_all"]["runs"],
                s["start_all"]["median_ms"],
                s["start_all"]["median_ms"] / COUNT,
                s["chain"]["median_ms"],
                s["stop_all"]["median_ms"],
                s["stop_all"]["median_ms"] / COUNT,
            ]
            for name, s in stats.items()
        ],
    )
    path = write_json("many", {"servers": COUNT, "stats": stats, "raw_seconds": timings})
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()

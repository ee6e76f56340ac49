"""Thread mode vs process mode: start+stop cycle, and the request rate a load-generating test reaches.

    uv run python benchmarks/bench_process.py            # full run (~1.5 minutes)
    uv run python benchmarks/bench_process.py --quick    # a smoke run

In thread mode the server shares the test process's GIL with the client that loads
it; in process mode it has its own interpreter (and, on a multi-core machine, its own
core). The load comes from `requests.Session`s in 1 or 4 client threads, over
loopback, for a fixed time per measurement. Two endpoints: ``/`` answers at once,
``/work`` does about a millisecond of pure-Python work per request. Everything is
interleaved round by round; medians are reported. Results also go to
benchmarks/results/process.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import statistics
import time

import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from _common import print_table, sample, summary, write_json
from uvicorn_testserver import UvicornTestServer


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def work(request: Request) -> PlainTextResponse:
    total = sum(i * i for i in range(20_000))  # ~1 ms of pure Python, holding the GIL
    return PlainTextResponse(str(total))


app = Starlette(routes=[Route("/", hello), Route("/work", work)])
# The child process imports this file by name; benchmarks/ is on the parent's sys.path, which it inherits.
IMPORT_STRING = "bench_process:app"


def server(mode: str) -> UvicornTestServer:
    if mode == "process":
        return UvicornTestServer(IMPORT_STRING, mode="process")
    return UvicornTestServer(app)


def cycle(mode: str) -> None:
    server(mode).start().stop()


def request_rate(base_url: str, path: str, clients: int, seconds: float) -> float:
    """Requests per second that `clients` threads with keep-alive sessions reach in `seconds`."""
    deadline = time.perf_counter() + seconds

    def client() -> int:
        count = 0
        with requests.Session() as session:
            session.get(base_url + path).raise_for_status()  # open the connection before the clock matters
            while time.perf_counter() < deadline and count < 100_000:
                session.get(base_url + path)
                count += 1
        return count

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        total = sum(pool.map(lambda _: client(), range(clients)))
    return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds, thread_cycles, process_cycles, seconds = (2, 10, 3, 0.5) if args.quick else (5, 20, 6, 2.0)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    modes = ("thread", "process")
    loads = [(path, clients) for path in ("/", "/work") for clients in (1, 4)]
    for mode in modes:
        cycle(mode)  # warm up imports
    cycles: dict[str, list[float]] = {mode: [] for mode in modes}
    rates: dict[str, list[float]] = {f"{mode} {path} x{clients}": [] for mode in modes for path, clients in loads}
    for _ in range(rounds):
        cycles["thread"] += sample(lambda: cycle("thread"), thread_cycles)
        cycles["process"] += sample(lambda: cycle("process"), process_cycles)
        for mode in modes:
            with server(mode) as running:
                for path, clients in loads:
                    rates[f"{mode} {path} x{clients}"].append(request_rate(running.base_url, path, clients, seconds))

    cycle_stats = {mode: summary(values) for mode, values in cycles.items()}
    print_table(
        "Start+stop cycle (lower is better)",
        ["mode", "runs", "median ms", "p10 ms", "p90 ms"],
        [[mode, s["runs"], s["median_ms"], s["p10_ms"], s["p90_ms"]] for mode, s in cycle_stats.items()],
    )
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print_table(
        f"Requests per second from the test process's own client threads ({os.cpu_count()} CPUs; higher is better)",
        ["endpoint", "client threads", "thread mode", "process mode", "process / thread"],
        [
            [
                path,
                clients,
                medians[f"thread {path} x{clients}"],
                medians[f"process {path} x{clients}"],
                medians[f"process {path} x{clients}"] / medians[f"thread {path} x{clients}"],
            ]
            for path, clients in loads
        ],
    )
    path = write_json(
        "process",
        {
            "cpus": os.cpu_count(),
            "seconds_per_measurement": seconds,
            "cycles": cycle_stats,
            "request_rates": rates,
            "request_rate_medians": medians,
        },
    )
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()

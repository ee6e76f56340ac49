"""Process mode: the start+GET+stop cycle with and without the template; the request rate under load.

    uv run python benchmarks/bench_process.py               # full run (~3 minutes)
    uv run python benchmarks/bench_process.py --quick       # a smoke run
    uv run python benchmarks/bench_process.py --no-load     # the cycles only

The cycle is what a test pays: construct, start, one GET on a fresh connection
(``http.client``), stop. Each case runs in a worker process of its own (the template
belongs to its test process), asked in turn for a batch of cycles, the order rotated
every round so a trend in machine load favours none:

* thread mode, for scale;
* process mode with ``UVICORN_TESTSERVER_PROCESS_START=spawn``: a fresh interpreter per child;
* process mode with the template (the default);

with an app whose module imports only Starlette (``bench_versions_app.py``), and with a
FastAPI app (``bench_process_fastapi_app.py``), also with ``UVICORN_TESTSERVER_PRELOAD`` naming
what its import costs besides.
Each worker's first cycle (imports; the template's start) is reported apart: what the
first process-mode server of a test process costs. Reported: each case's median of the
per-round medians, p10/p90 over all cycles, and the median of the per-round ratios
spawn / this case for the same app (how many times faster than spawn).

The load: in thread mode the server shares the test process's GIL with the client that
loads it; in process mode it has its own interpreter (and, on a multi-core machine, its
own core). `requests.Session`s in 1 or 4 client threads, over loopback, for a fixed time
per measurement; ``/`` answers at once, ``/work`` does about a millisecond of pure-Python
work per request. Results also go to benchmarks/results/process.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Literal

import requests
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from _common import Worker, print_table, summary, write_json
from uvicorn_testserver import UvicornTestServer

HERE = Path(__file__).resolve().parent
STARLETTE_APP = "bench_versions_app:app"
FASTAPI_APP = "bench_process_fastapi_app:app"
# What the FastAPI app's import costs besides Starlette (found with `python -X importtime`): FastAPI imports
# pydantic.v1 only when the app declares its first route.
FASTAPI_PRELOAD = "fastapi,pydantic.v1"
SPAWN = {"UVICORN_TESTSERVER_PROCESS_START": "spawn"}
TEMPLATE = {"UVICORN_TESTSERVER_PROCESS_START": "template"}
#: case: (mode, app, extra environment of its worker, the spawn case of the same app)
CASES: dict[str, tuple[str, str, dict[str, str], str]] = {
    "thread, Starlette": ("thread", STARLETTE_APP, {}, "process spawn, Starlette"),
    "process spawn, Starlette": ("process", STARLETTE_APP, SPAWN, "process spawn, Starlette"),
    "process template, Starlette": ("process", STARLETTE_APP, TEMPLATE, "process spawn, Starlette"),
    "process spawn, FastAPI": ("process", FASTAPI_APP, SPAWN, "process spawn, FastAPI"),
    "process template, FastAPI": ("process", FASTAPI_APP, TEMPLATE, "process spawn, FastAPI"),
    "process template + preload, FastAPI": (
        "process",
        FASTAPI_APP,
        {**TEMPLATE, "UVICORN_TESTSERVER_PRELOAD": FASTAPI_PRELOAD},
        "process spawn, FastAPI",
    ),
}
BATCH = {
    "thread, Starlette": 20,
    "process spawn, Starlette": 3,
    "process template, Starlette": 10,
    "process spawn, FastAPI": 2,
    "process template, FastAPI": 3,
    "process template + preload, FastAPI": 10,
}


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


def cycle(mode: Literal["thread", "process"], app: str) -> float:
    """One start + GET + stop of `app` in `mode`; its duration in seconds."""
    started = time.perf_counter()
    with UvicornTestServer(app, mode=mode) as running:
        connection = http.client.HTTPConnection(running.host, running.port, timeout=30)
        connection.request("GET", "/")
        assert connection.getresponse().read() == b"hello"
        connection.close()
    return time.perf_counter() - started


def worker(mode: str, app: str) -> None:
    """Read ``COUNT`` lines; answer each with the JSON list of that many cycle durations in seconds."""
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    served: Literal["thread", "process"] = "process" if mode == "process" else "thread"
    for line in sys.stdin:
        print(json.dumps([cycle(served, app) for _ in range(int(line))]), flush=True)


def measure_cycles(rounds: int, batch: dict[str, int]) -> dict[str, Any]:
    workers = {
        name: Worker([sys.executable, __file__, "--worker", mode, app], env)
        for name, (mode, app, env, _) in CASES.items()
    }
    try:
        first = {name: one.ask("1")[0] for name, one in workers.items()}
        per_round: dict[str, list[float]] = {name: [] for name in CASES}
        durations: dict[str, list[float]] = {name: [] for name in CASES}
        names = list(CASES)
        for round_number in range(rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                measured = workers[name].ask(str(batch[name]))
                durations[name] += measured
                per_round[name].append(statistics.median(measured))
    finally:
        for one in workers.values():
            one.close()
    return {"first_cycle_s": first, "per_round_medians_s": per_round, "durations_s": durations}


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
    parser.add_argument("--no-load", action="store_true", help="measure the cycles only")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "APP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    rounds, seconds = (2, 0.5) if args.quick else (10, 2.0)
    batch = {name: max(1, count // 3) for name, count in BATCH.items()} if args.quick else BATCH
    cycles = measure_cycles(rounds, batch)
    per_round = cycles["per_round_medians_s"]
    rows = []
    for name, medians in per_round.items():
        spawn = per_round[CASES[name][3]]
        speedups = [slow / fast for slow, fast in zip(spawn, medians, strict=True)]
        stats = summary(cycles["durations_s"][name])
        rows.append(
            [
                name,
                stats["runs"],
                statistics.median(medians) * 1000,
                stats["p10_ms"],
                stats["p90_ms"],
                statistics.median(speedups),
                f"{min(speedups):.1f} to {max(speedups):.1f}",
                cycles["first_cycle_s"][name] * 1000,
            ]
        )
    print_table(
        "Start + GET + stop cycle (medians of per-round medians; lower is better)",
        ["case", "cycles", "median ms", "p10 ms", "p90 ms", "spawn / this", "per-round range", "first cycle ms"],
        rows,
    )
    result: dict[str, Any] = {"cpus": os.cpu_count(), "rounds": rounds, "batch": batch, "cycles": cycles}
    if not args.no_load:
        result.update(measure_load(rounds=2 if args.quick else 5, seconds=seconds))
    path = write_json("process", result)
    print(f"\nJSON: {path}")


def measure_load(*, rounds: int, seconds: float) -> dict[str, Any]:
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    modes = ("thread", "process")
    loads = [(path, clients) for path in ("/", "/work") for clients in (1, 4)]
    rates: dict[str, list[float]] = {f"{mode} {path} x{clients}": [] for mode in modes for path, clients in loads}
    for _ in range(rounds):
        for mode in modes:
            with server(mode) as running:
                for path, clients in loads:
                    rates[f"{mode} {path} x{clients}"].append(request_rate(running.base_url, path, clients, seconds))
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
    return {"seconds_per_measurement": seconds, "request_rates": rates, "request_rate_medians": medians}


if __name__ == "__main__":
    main()

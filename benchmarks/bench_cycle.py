"""Start+stop cycle and request rate: UvicornTestServer side by side with the alternatives.

    uv run python benchmarks/bench_cycle.py            # full run (~1 minute)
    uv run python benchmarks/bench_cycle.py --quick    # a smoke run

Everything runs in one process, interleaved round by round, so machine noise hits
every contender alike. Reported: medians (and p10/p90) in milliseconds, and ratios
against aiohttp's own in-loop TestServer. Results also go to benchmarks/results/cycle.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import logging
import socket
import statistics
import threading
import time

import aiohttp
import requests
import uvicorn
from aiohttp import web
from aiohttp.test_utils import TestServer
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from _common import loop_mode_cycles, naive_thread_server, print_table, sample, summary, write_json
from uvicorn_testserver import AsyncTestServer, UvicornTestServer


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


app = Starlette(routes=[Route("/", hello)])


def cycle_harness() -> None:
    UvicornTestServer(app).start().stop()


def cycle_process() -> None:
    UvicornTestServer("bench_cycle:app", mode="process").start().stop()  # the child imports this file


def cycle_naive() -> None:
    with naive_thread_server(app):
        pass


def cycle_starlette_testclient() -> None:
    with TestClient(app):
        pass


def aiohttp_cycles(loop: asyncio.AbstractEventLoop, count: int) -> list[float]:
    async def run() -> list[float]:
        durations = []
        for _ in range(count):
            start = time.perf_counter()
            server = TestServer(web.Application())
            await server.start_server()
            await server.close()
            durations.append(time.perf_counter() - start)
        return durations

    return loop.run_until_complete(run())


def aiohttp_thread_cycle() -> None:
    """aiohttp's TestServer as a sync test must run it: in a thread, on a new event loop."""

    async def cycle() -> None:
        server = TestServer(web.Application())
        await server.start_server()
        await server.close()

    thread = threading.Thread(target=asyncio.run, args=(cycle(),))
    thread.start()
    thread.join()


def test_cycle_harness(phases: dict[str, list[float]]) -> float:
    """A test's worth of work: start, one stdlib GET on a fresh connection, stop. Records each phase."""
    started = time.perf_counter()
    server = UvicornTestServer(app).start()
    ready = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/")
    assert connection.getresponse().read() == b"hello"
    connection.close()
    answered = time.perf_counter()
    server.stop()
    stopped = time.perf_counter()
    phases["start"].append(ready - started)
    phases["request"].append(answered - ready)
    phases["stop"].append(stopped - answered)
    return stopped - started


def test_cycle_aiohttp() -> float:
    """The same for aiohttp's in-loop TestServer: asyncio.run of start, one GET with its own session, close."""

    async def hello_handler(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def cycle() -> None:
        web_app = web.Application()
        web_app.router.add_get("/", hello_handler)
        server = TestServer(web_app)
        await server.start_server()
        async with aiohttp.ClientSession() as session, session.get(server.make_url("/")) as response:
            assert await response.text() == "hello"
        await server.close()

    started = time.perf_counter()
    asyncio.run(cycle())
    return time.perf_counter() - started


def async_test_cycle(mode: str, http: str) -> float:
    """An async test's worth of work: asyncio.run of AsyncTestServer(mode=...) start, one GET with its own
    aiohttp session (the client aiohttp's row uses), stop."""

    async def cycle() -> None:
        async with (
            AsyncTestServer(app, mode=mode, http=http) as server,
            aiohttp.ClientSession() as session,
            session.get(server.url("/")) as response,
        ):
            assert await response.text() == "hello"

    started = time.perf_counter()
    asyncio.run(cycle())
    return time.perf_counter() - started


def bare_uvicorn_async_cycle() -> float:
    """The floor under loop mode: uvicorn started by hand in the test's loop (its own startup, lifespan
    included), the same GET, its servers closed and lifespan shut down; no harness."""

    async def cycle() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="on")
            server = uvicorn.Server(config)
            config.load()
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                assert await response.text() == "hello"
            for listening in server.servers:
                listening.close()
            await server.lifespan.shutdown()

    started = time.perf_counter()
    asyncio.run(cycle())
    return time.perf_counter() - started


def has_httptools() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True


def request_rate_requests(base_url: str, count: int) -> float:
    with requests.Session() as session:
        session.get(base_url).raise_for_status()  # open the keep-alive connection
        start = time.perf_counter()
        for _ in range(count):
            session.get(base_url)
        return count / (time.perf_counter() - start)


def request_rate_aiohttp(loop: asyncio.AbstractEventLoop, base_url: str, count: int) -> float:
    async def run() -> float:
        async with aiohttp.ClientSession() as session:
            async with session.get(base_url) as response:
                await response.read()
            start = time.perf_counter()
            for _ in range(count):
                async with session.get(base_url) as response:
                    await response.read()
            return count / (time.perf_counter() - start)

    return loop.run_until_complete(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    args = parser.parse_args()
    rounds, fast, slow, requests_per_run = (3, 20, 2, 200) if args.quick else (10, 50, 3, 1000)
    logging.getLogger("uvicorn").setLevel(logging.WARNING)
    loop = asyncio.new_event_loop()

    cycles: dict[str, list[float]] = {
        name: [] for name in ("harness", "loop", "process", "naive", "aiohttp", "aiohttp-thread", "starlette")
    }
    test_cycles: dict[str, list[float]] = {"harness": [], "aiohttp": []}
    phases: dict[str, list[float]] = {"start": [], "request": [], "stop": []}
    round_ratios: list[float] = []
    https = ("h11", "httptools") if has_httptools() else ("h11",)
    async_cases = ["aiohttp", "bare"] + [f"{mode}/{http}" for http in https for mode in ("loop", "thread")]
    async_cycles: dict[str, list[float]] = {case: [] for case in async_cases}
    async_ratios: dict[str, list[float]] = {"bare uvicorn vs aiohttp/auto": []} | {
        f"{kind}/{http}": [] for http in https for kind in ("loop vs aiohttp", "thread vs loop")
    }
    rates: dict[str, list[float]] = {
        f"{server}/{client}": [] for server in ("harness", "bare") for client in ("requests", "aiohttp")
    }
    cycle_harness()  # warm up imports and protocol classes
    for _ in range(5):  # warm both
        test_cycle_harness({"start": [], "request": [], "stop": []})
        test_cycle_aiohttp()
        async_test_cycle("loop", "h11")
        async_test_cycle("thread", "h11")
    for round_number in range(rounds):
        # A test's worth of work, interleaved case by case within the round.
        harness_round, aiohttp_round = [], []
        for _ in range(fast):
            harness_round.append(test_cycle_harness(phases))
            aiohttp_round.append(test_cycle_aiohttp())
        test_cycles["harness"] += harness_round
        test_cycles["aiohttp"] += aiohttp_round
        round_ratios.append(statistics.median(harness_round) / statistics.median(aiohttp_round))
        # The async faces against aiohttp's in-loop TestServer, the same client, interleaved case by case.
        async_round: dict[str, list[float]] = {case: [] for case in async_cases}
        for _ in range(fast):
            for case in async_cases:
                if case == "aiohttp":
                    async_round[case].append(test_cycle_aiohttp())
                elif case == "bare":
                    async_round[case].append(bare_uvicorn_async_cycle())
                else:
                    mode, http = case.split("/")
                    async_round[case].append(async_test_cycle(mode, http))
        medians_now = {case: statistics.median(values) for case, values in async_round.items()}
        async_ratios["bare uvicorn vs aiohttp/auto"].append(medians_now["bare"] / medians_now["aiohttp"])
        for http in https:
            async_ratios[f"loop vs aiohttp/{http}"].append(medians_now[f"loop/{http}"] / medians_now["aiohttp"])
            async_ratios[f"thread vs loop/{http}"].append(medians_now[f"thread/{http}"] / medians_now[f"loop/{http}"])
        for case, values in async_round.items():
            async_cycles[case] += values
        cycles["harness"] += sample(cycle_harness, fast)
        cycles["loop"] += loop_mode_cycles(loop, app, fast)
        cycles["process"] += sample(cycle_process, slow)
        cycles["naive"] += sample(cycle_naive, slow)
        cycles["aiohttp"] += aiohttp_cycles(loop, fast)
        cycles["aiohttp-thread"] += sample(aiohttp_thread_cycle, fast)
        cycles["starlette"] += sample(cycle_starlette_testclient, fast)
        # Alternate which server goes first, so a trend in machine load favours neither.
        for kind in ("harness", "bare") if round_number % 2 == 0 else ("bare", "harness"):
            # A stalled machine can pause a client past uvicorn's 5 s keep-alive; give both servers longer.
            with (
                UvicornTestServer(app, timeout_keep_alive=60)
                if kind == "harness"
                else naive_thread_server(app, timeout_keep_alive=60) as server
            ):
                base_url = server if isinstance(server, str) else server.base_url
                rates[f"{kind}/requests"].append(request_rate_requests(base_url, requests_per_run))
                rates[f"{kind}/aiohttp"].append(request_rate_aiohttp(loop, base_url, requests_per_run))
    loop.close()

    stats = {name: summary(values) for name, values in cycles.items()}
    baseline = stats["aiohttp"]["median_ms"]
    labels = {
        "harness": "UvicornTestServer (thread)",
        "loop": "AsyncTestServer(mode='loop') (in-loop)",
        "process": "UvicornTestServer(mode='process') (child process)",
        "naive": "naive uvicorn.Server thread (poll `started`, join)",
        "aiohttp": "aiohttp TestServer (in-loop, baseline)",
        "aiohttp-thread": "aiohttp TestServer in a thread with its own loop",
        "starlette": "Starlette TestClient (in-process, no socket)",
    }
    print_table(
        "Start+stop cycle (lower is better)",
        ["contender", "runs", "median ms", "p10 ms", "p90 ms", "x aiohttp"],
        [
            [labels[name], s["runs"], s["median_ms"], s["p10_ms"], s["p90_ms"], s["median_ms"] / baseline]
            for name, s in stats.items()
        ],
    )
    test_stats = {name: summary(values) for name, values in test_cycles.items()}
    print_table(
        "A test's worth of work: start, one GET on a fresh connection, stop (lower is better)",
        ["contender", "runs", "median ms", "p10 ms", "p90 ms"],
        [
            ["UvicornTestServer (stdlib http.client GET)", *_row(test_stats["harness"])],
            ["aiohttp TestServer (asyncio.run, its own ClientSession)", *_row(test_stats["aiohttp"])],
        ],
    )
    print_table(
        "UvicornTestServer's phases in that cycle, and the ratio to aiohttp per round",
        ["start ms", "first request ms", "stop ms", "ratio (median of per-round medians)", "min", "max"],
        [
            [
                statistics.median(phases["start"]) * 1000,
                statistics.median(phases["request"]) * 1000,
                statistics.median(phases["stop"]) * 1000,
                statistics.median(round_ratios),
                min(round_ratios),
                max(round_ratios),
            ]
        ],
    )
    async_stats = {case: summary(values) for case, values in async_cycles.items()}
    async_labels = {
        "aiohttp": "aiohttp TestServer (in-loop, baseline)",
        "bare": "bare uvicorn started by hand in the loop (no harness), http=auto",
        **{f"loop/{http}": f"AsyncTestServer(mode='loop'), http={http}" for http in https},
        **{f"thread/{http}": f"AsyncTestServer (thread mode), http={http}" for http in https},
    }
    print_table(
        "An async test's worth of work: asyncio.run, start, one GET with its own aiohttp session, stop",
        ["contender", "runs", "median ms", "p10 ms", "p90 ms"],
        [[async_labels[case], *_row(stats)] for case, stats in async_stats.items()],
    )
    print_table(
        "Their ratios, per round (median of the per-round medians; min, max)",
        ["ratio", "median", "min", "max"],
        [
            [name.replace("/", ", http="), statistics.median(values), min(values), max(values)]
            for name, values in async_ratios.items()
        ],
    )
    medians = {name: sorted(values)[len(values) // 2] for name, values in rates.items()}
    print_table(
        "Requests per second over one keep-alive connection (higher is better)",
        ["client", "UvicornTestServer", "bare uvicorn thread", "harness / bare"],
        [
            [
                client,
                medians[f"harness/{client}"],
                medians[f"bare/{client}"],
                medians[f"harness/{client}"] / medians[f"bare/{client}"],
            ]
            for client in ("requests", "aiohttp")
        ],
    )
    path = write_json(
        "cycle",
        {
            "cycles": stats,
            "test_cycles": test_stats,
            "test_cycle_phases_ms": {name: statistics.median(values) * 1000 for name, values in phases.items()},
            "test_cycle_round_ratios": round_ratios,
            "async_test_cycles": async_stats,
            "async_round_ratios": async_ratios,
            "request_rates": rates,
            "request_rate_medians": medians,
        },
    )
    print(f"\nJSON: {path}")


def _row(stats: dict[str, float]) -> list[object]:
    return [stats["runs"], stats["median_ms"], stats["p10_ms"], stats["p90_ms"]]


if __name__ == "__main__":
    main()

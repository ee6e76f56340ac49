"""Fifty servers at once: microservices that call each other through their base URLs.

Servers start and stop in parallel from a thread pool (benchmarks/bench_many.py
measures that against one after the other). Each server has its own thread and
event loop, so a service that awaits its neighbour never blocks the neighbour.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest
import requests

from apps import Baseline, lifespan_fails_app
from apps_many import service_app
from uvicorn_testserver import ServerExceptionsError, ServerStartupError, UvicornTestServer

COUNT = 50


def start_all(servers: list[UvicornTestServer]) -> list[UvicornTestServer]:
    """Start every server from a thread pool; if one fails, stop the others and raise its error."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(server.start) for server in servers]
        concurrent.futures.wait(futures)
    failures = [error for future in futures if (error := future.exception()) is not None]
    if failures:
        stop_all([future.result() for future in futures if future.exception() is None])
        raise failures[0]
    return servers


def stop_all(servers: list[UvicornTestServer]) -> None:
    """Stop every server from a thread pool; raise the first error once all have stopped."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(server.stop) for server in servers]
    for future in futures:
        future.result()


def fleet(count: int = COUNT) -> tuple[list[UvicornTestServer], list[str]]:
    """`count` services (not started) and the peer list their apps read base URLs from."""
    peers: list[str] = []
    return [UvicornTestServer(service_app(i, peers), shutdown_timeout=10) for i in range(count)], peers


@pytest.fixture(scope="module")
def services() -> Iterator[list[UvicornTestServer]]:
    servers, peers = fleet()
    start_all(servers)
    peers.extend(server.base_url for server in servers)
    try:
        yield servers
    finally:
        stop_all(servers)


def test_fifty_servers_listen_on_distinct_ports_and_each_answers(services: list[UvicornTestServer]) -> None:
    assert len({server.port for server in services}) == COUNT
    with requests.Session() as session:
        answers = [session.get(server.url("/whoami"), timeout=30).json()["index"] for server in services]
    assert answers == list(range(COUNT))


def test_a_request_walks_the_chain_of_fifty_services_through_their_base_urls(
    services: list[UvicornTestServer],
) -> None:
    response = httpx.get(services[0].url("/chain"), timeout=30)
    assert response.json() == {"path": list(range(COUNT))}


def test_one_service_calls_the_other_forty_nine_at_once(services: list[UvicornTestServer]) -> None:
    response = requests.get(services[7].url("/fanout"), timeout=30)
    assert response.json() == {"calls": COUNT - 1, "sum": sum(range(COUNT)) - 7}


def test_fifty_servers_stop_in_parallel_without_waiting_for_a_timeout_and_release_everything() -> None:
    with UvicornTestServer(service_app(0, [])):  # warm imports so the baseline is steady
        pass
    baseline = Baseline()
    servers, peers = fleet()
    start_all(servers)
    peers.extend(server.base_url for server in servers)
    assert httpx.get(servers[0].url("/chain"), timeout=30).json()["path"] == list(range(COUNT))  # connections used
    started_at = time.monotonic()
    stop_all(servers)
    elapsed = time.monotonic() - started_at
    # A server that waited out its graceful drain would alone take shutdown_timeout (10 s).
    assert elapsed < servers[0].shutdown_timeout, f"stopping {COUNT} servers took {elapsed:.2f}s"
    assert not any(server.is_running for server in servers)
    baseline.assert_restored(wait=2.0)


def test_a_stopped_service_in_the_chain_fails_its_callers_which_keep_the_errors() -> None:
    peers: list[str] = []
    servers = [UvicornTestServer(service_app(i, peers), raise_server_exceptions=False) for i in range(5)]
    start_all(servers)
    peers.extend(server.base_url for server in servers)
    servers[3].stop()
    try:
        assert requests.get(servers[0].url("/chain"), timeout=30).status_code == 500
    finally:
        stop_all(servers)
    # Service 2 could not connect to service 3; services 1 and 0 got a 500 from downstream.
    assert [type(error) for error in servers[2].errors] == [httpx.ConnectError]
    assert [type(error) for error in servers[1].errors] == [httpx.HTTPStatusError]
    assert [type(error) for error in servers[0].errors] == [httpx.HTTPStatusError]
    assert servers[4].errors == []


def test_the_first_failing_caller_is_raised_at_stop() -> None:
    peers: list[str] = []
    servers = [UvicornTestServer(service_app(i, peers)) for i in range(2)]
    start_all(servers)
    peers.extend([servers[0].base_url, "http://127.0.0.1:9"])  # nothing listens on the discard port
    try:
        assert requests.get(servers[0].url("/chain"), timeout=30).status_code == 500
    finally:
        servers[1].stop()
        with pytest.raises(
            ServerExceptionsError,
            match=r"(?s)^httpx\.ConnectError: All connection attempts failed.*raised 1 unhandled exception",
        ):
            servers[0].stop()


def test_one_failed_start_among_many_stops_the_others_and_raises_its_error() -> None:
    servers = [UvicornTestServer(service_app(i, [])) for i in range(9)]
    servers.insert(4, UvicornTestServer(lifespan_fails_app))
    with pytest.raises(ServerStartupError, match=r"lifespan startup raised RuntimeError\('database unreachable'\)"):
        start_all(servers)
    assert not any(server.is_running for server in servers)

"""Many start/stop cycles, good and failed, leave threads, fds and memory where they were."""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc
import weakref
from collections.abc import Iterator

import pytest
import requests

import apps
from apps import Baseline, hello_app
from uvicorn_testserver import AsyncTestServer, ServerStartupError, UvicornTestServer


class Memory:
    """Memory allocated since `mark()` and still alive, counted by allocation site.

    Only sites that gained more than one block count as growth: a leak keeps adding
    objects, while the interpreter now and then grows one of its own tables in a single
    block (~1 MB once in ~2,000 cycles, then never again in 12,000; more in a process
    that imported more). `total()` still guards against one buffer growing without end.
    """

    def __init__(self) -> None:
        self._start = 0
        self._snapshot: tracemalloc.Snapshot | None = None

    def mark(self) -> None:
        gc.collect()
        self._start = tracemalloc.get_traced_memory()[0]
        self._snapshot = tracemalloc.take_snapshot()

    def total(self) -> int:
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - self._start

    def grown(self) -> tuple[int, str]:
        """Bytes held by sites that gained more than one block, and the three largest of them."""
        assert self._snapshot is not None
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(self._snapshot, "lineno")
        growing = [stat for stat in stats if stat.count_diff > 1]
        return sum(stat.size_diff for stat in growing), "\n".join(str(stat) for stat in growing[:3])


@pytest.fixture
def own_logging() -> Iterator[None]:
    """Keep uvicorn's records away from the process's handlers for the test.

    A failed start logs a traceback; pytest's report capture, or the logging config an
    app set up in an earlier test, may keep those records, and that memory is not the harness's.
    """
    logger = logging.getLogger("uvicorn")
    handlers, propagate = list(logger.handlers), logger.propagate
    logger.handlers[:] = [logging.NullHandler()]
    logger.propagate = False
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate


@pytest.fixture
def memory(own_logging: None) -> Iterator[Memory]:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    yield Memory()
    if not was_tracing:
        tracemalloc.stop()


def cycle(count: int, *, request_every: int = 0) -> None:
    for i in range(count):
        server = UvicornTestServer(hello_app).start()
        try:
            if request_every and i % request_every == 0:
                assert requests.get(server.url("/"), timeout=30).text == "hello"
        finally:
            server.stop()


@pytest.mark.timeout(300)  # ~2 ms a cycle under tracemalloc, but a shared machine stalls now and then
def test_a_thousand_start_stop_cycles_leak_nothing(memory: Memory) -> None:
    cycle(20, request_every=10)  # warm caches: imports, protocol classes, the loop factory
    baseline = Baseline()
    memory.mark()
    cycle(1000, request_every=10)
    baseline.assert_restored()
    grown, where = memory.grown()
    # About 0.1 MB of free lists and caches; one stopped server kept per cycle would be 1.6 MB.
    assert grown < 1_000_000, f"memory grew by {grown / 1e6:.2f} MB over 1000 cycles, most at:\n{where}"
    assert memory.total() < 16_000_000


def test_fifty_failed_starts_leak_nothing(memory: Memory) -> None:
    def fail_once() -> None:
        with pytest.raises(ServerStartupError, match="database unreachable"):
            UvicornTestServer(apps.lifespan_fails_app).start()

    for _ in range(5):
        fail_once()
    baseline = Baseline()
    memory.mark()
    for _ in range(50):
        fail_once()
    baseline.assert_restored()
    grown, where = memory.grown()
    assert grown < 500_000, f"memory grew by {grown / 1e6:.2f} MB over 50 failed starts, most at:\n{where}"
    assert memory.total() < 16_000_000


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    """Only reference counting frees objects during the test."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.usefixtures("no_cycle_collector")
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_stopped_server_is_freed_once_dropped(mode: str) -> None:
    # No reference cycle: its log, config, loop and sockets go at once, not at some later collection.
    server = UvicornTestServer("apps:hello_app", mode=mode)  # type: ignore[arg-type]
    with server:
        assert requests.get(server.url("/"), timeout=30).text == "hello"
    dropped: list[weakref.ref[object]] = [weakref.ref(server), weakref.ref(server.log)]
    del server
    assert [ref() for ref in dropped] == [None, None]


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_cycle_collector")
@pytest.mark.parametrize("mode", ["thread", "loop", "process"])
async def test_a_stopped_async_server_is_freed_once_dropped(mode: str) -> None:
    server = AsyncTestServer("apps:hello_app", mode=mode)  # type: ignore[arg-type]
    async with server:
        url = server.url("/")
        assert await asyncio.to_thread(lambda: requests.get(url, timeout=30).text) == "hello"
    dropped: list[weakref.ref[object]] = [weakref.ref(server), weakref.ref(server.log)]
    del server
    assert [ref() for ref in dropped] == [None, None]

"""Cancelling an async start or stop, at any moment, in every mode, under asyncio and trio.

The promise: a cancelled start returns promptly and leaves nothing running (if lifespan
startup completed, lifespan shutdown ran); a cancelled stop finishes the stop, then the
cancellation propagates; the app's errors stay in `errors` and never replace it. The
property test (`test_lifecycle_properties.py`) explores this at random; these pin the
cases it and the reports found.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

import apps_contract
from apps import port_is_free, server_threads
from uvicorn_testserver import (
    AsyncTestServer,
    ServerExceptionsError,
    ServerStartupError,
    ServerStateError,
    UvicornTestServer,
)

WAIT = 30  # a deadline for failures only: a passing test never waits it out
TICKS = [0, 1, 2, 3, 5, 8, 13, 40]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def modes_for(backend: str) -> list[str]:
    return ["thread", "loop", "process"] if backend == "asyncio" else ["thread", "process"]


def recorded(path: Path) -> list[str]:
    """The lifespan events of a run: the child's, written to `path`, or this process's."""
    if path.exists():
        return path.read_text().splitlines()
    return list(apps_contract.events)


def new_server(mode: str, path: Path, app: str = "apps_contract:app", **options: Any) -> AsyncTestServer:
    apps_contract.events.clear()
    env = {"LIFESPAN_RECORD": str(path)} if mode == "process" else None
    return AsyncTestServer(app, mode=mode, env=env, startup_timeout=WAIT, shutdown_timeout=2, **options)  # type: ignore[arg-type]


def left_nothing(live: AsyncTestServer) -> None:
    assert not live.is_running
    try:
        port = live.port
    except ServerStateError:
        return  # cancelled before it bound a port
    assert port_is_free(port), f"port {port} still listens"
    if live.mode == "process" and live.pid is not None:
        with pytest.raises(ProcessLookupError):
            os.kill(live.pid, 0)


def harness_tasks() -> list[str]:
    """Tasks of uvicorn or the harness still pending on this loop (asyncio only)."""
    names = ("Serving.main", "tracked_main", "LifespanOn.main", "RequestResponseCycle")
    pending = [task for task in asyncio.all_tasks() if not task.done() and task is not asyncio.current_task()]
    return [repr(task) for task in pending if any(name in repr(task.get_coro()) for name in names)]


async def cancelled_after(ticks: int, call: Callable[[], Any]) -> bool:
    """Run `call()` and cancel it after `ticks` scheduler passes. True if the cancellation reached the caller,
    or `call()` had ended (its `ServerExceptionsError` included) before the cancellation was asked."""
    asked = anyio.Event()
    outcome: list[bool] = []

    async def run() -> None:
        try:
            await call()
        except ServerExceptionsError:
            if asked.is_set():
                raise  # it replaced the cancellation
        # Reached only if nothing was cancelled: right if it ended before the cancellation was asked.
        outcome.append(not asked.is_set())

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(run)
            for _ in range(ticks):
                await anyio.lowlevel.checkpoint()
            asked.set()
            group.cancel_scope.cancel()
    return not outcome or outcome[0]


@pytest.mark.anyio
@pytest.mark.parametrize("face", ["AsyncTestServer", "async with UvicornTestServer"])
async def test_a_start_cancelled_before_it_runs_returns_at_once(anyio_backend: str, face: str) -> None:
    # The report: `with trio.move_on_after(0): await AsyncTestServer(app).start()` never returned.
    for mode in ("thread", "process"):
        live: Any = AsyncTestServer("apps_contract:app", mode=mode) if face == "AsyncTestServer" else None
        with anyio.fail_after(WAIT), anyio.move_on_after(0) as scope:
            if live is not None:
                await live.start()
            else:
                live = UvicornTestServer("apps_contract:app", mode=mode)
                async with live:
                    pytest.fail("the block must not run: its start was cancelled")
        assert scope.cancelled_caught
        assert not live.is_running


@pytest.mark.anyio
@pytest.mark.parametrize("ticks", TICKS)
async def test_a_cancelled_start_leaves_nothing_and_shuts_down_what_started(
    anyio_backend: str, ticks: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for mode in modes_for(anyio_backend):
        path = tmp_path / f"{mode}.events"
        live = new_server(mode, path, "apps_contract:slow_startup_app")
        assert await cancelled_after(ticks, live.start)
        left_nothing(live)
        events = recorded(path)
        if "startup" in events:
            assert events[-1] == "shutdown", f"{mode}: lifespan startup completed, so its shutdown must run: {events}"
        if anyio_backend == "asyncio":
            assert harness_tasks() == []
    gc.collect()  # a task destroyed while pending, or a future's exception never retrieved, is logged here
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == []


@pytest.mark.anyio
@pytest.mark.parametrize("ticks", TICKS)
async def test_a_cancelled_stop_finishes_then_propagates_and_keeps_the_apps_errors(
    anyio_backend: str, ticks: int, tmp_path: Path
) -> None:
    for mode in modes_for(anyio_backend):
        live = new_server(mode, tmp_path / f"{mode}.events")
        await live.start()
        async with httpx.AsyncClient(base_url=live.base_url) as client:
            assert (await client.get("/boom")).status_code == 500
        assert await cancelled_after(ticks, live.stop), f"{mode}: the cancellation was lost"
        left_nothing(live)
        assert [type(error).__name__ for error in live.errors] == [
            "ChildAppError" if mode == "process" else "RuntimeError"
        ]
        await live.stop()  # the run's errors were not raised (the cancellation won), and are not raised now


@pytest.mark.anyio
async def test_a_stop_in_an_already_cancelled_scope_still_stops(anyio_backend: str, tmp_path: Path) -> None:
    for mode in modes_for(anyio_backend):
        live = new_server(mode, tmp_path / f"{mode}.events")
        await live.start()
        with anyio.fail_after(WAIT), anyio.CancelScope() as scope:
            scope.cancel()
            await live.stop()
        assert scope.cancelled_caught
        left_nothing(live)


@pytest.mark.asyncio
async def test_a_native_asyncio_cancel_of_a_stop_with_app_errors_propagates_the_cancellation() -> None:
    # The report: in loop mode a cancelled stop ended in ServerExceptionsError 11 times in 48.
    for mode in ("thread", "loop", "process"):
        live = AsyncTestServer("apps_contract:app", mode=mode)
        await live.start()
        async with httpx.AsyncClient(base_url=live.base_url) as client:
            assert (await client.get("/boom")).status_code == 500
        for ticks in range(1, 5):  # (a task cancelled before its first step never runs its coroutine at all)
            task = asyncio.create_task(live.stop())
            for _ in range(ticks):
                await asyncio.sleep(0)
            expected = asyncio.CancelledError if task.cancel() else ServerExceptionsError  # else it ended first
            with pytest.raises(expected):
                await asyncio.wait_for(task, WAIT)
            left_nothing(live)
            assert len(live.errors) == 1
            if ticks < 4:
                await live.start()
                async with httpx.AsyncClient(base_url=live.base_url) as client:
                    assert (await client.get("/boom")).status_code == 500


# -- found by the property test: cancellations that land between "lifespan started" and "serving" --------


async def _counting_app(scope: Any, receive: Any, send: Any) -> None:
    """Lifespan startup takes 20 ms and is counted, and so is shutdown; HTTP answers ``hello``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await asyncio.sleep(0.02)
                LIFESPAN["startup"] += 1
                await send({"type": "lifespan.startup.complete"})
            else:
                LIFESPAN["shutdown"] += 1
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


LIFESPAN = {"startup": 0, "shutdown": 0}


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["thread", "loop"])
async def test_a_start_cancelled_once_lifespan_started_runs_lifespan_shutdown(mode: str) -> None:
    # Cancelled just as the start completed, the serving task was cancelled after all: no lifespan shutdown.
    server = AsyncTestServer(_counting_app, mode=mode)  # type: ignore[arg-type]
    for ticks in range(30):
        before = dict(LIFESPAN)
        task = asyncio.create_task(server.start())
        while LIFESPAN["startup"] == before["startup"] and not task.done():  # noqa: ASYNC110 - counts passes
            await asyncio.sleep(0)
        for _ in range(ticks):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        await server.stop()  # a start that completed before the cancellation is stopped here
        assert LIFESPAN["shutdown"] - before["shutdown"] == LIFESPAN["startup"] - before["startup"], ticks


@pytest.mark.asyncio
async def test_a_loop_mode_start_cancelled_while_it_listens_leaves_no_watched_socket() -> None:
    # Cancelled inside loop.create_server, the listener stayed registered on the caller's loop; a restart that
    # got the same descriptor number then reported running but never accepted.
    server = AsyncTestServer(_counting_app, mode="loop")
    for round_ in range(24):
        with anyio.move_on_after(0.018 + (round_ % 12) * 0.0005):  # around the end of lifespan startup
            await server.start()
        await server.stop()
        await server.start()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT) as client:
            assert (await client.get("/")).text == "hello"
        await server.stop()


# -- found by review: a cancellation during a health check, during a failed start's cleanup, and during a
#    stop that ends in ServerShutdownError ------------------------------------------------------------


@pytest.mark.anyio
async def test_a_start_cancelled_during_its_health_check_ends_promptly(anyio_backend: str, tmp_path: Path) -> None:
    for mode in modes_for(anyio_backend):
        live = new_server(mode, tmp_path / f"{mode}.events", "apps_contract:hanging_health_app", health_path="/health")
        started = time.monotonic()
        with anyio.move_on_after(0.5) as scope:
            await live.start()
        assert scope.cancelled_caught, f"{mode}: the start returned, or its cancellation was lost"
        assert time.monotonic() - started < WAIT / 3, f"{mode}: the cancellation waited for the health check"
        left_nothing(live)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["thread", "loop", "process"])
async def test_a_native_timeout_during_the_health_check_is_not_lost(mode: str, tmp_path: Path) -> None:
    live = new_server(mode, tmp_path / "events", "apps_contract:hanging_health_app", health_path="/health")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await live.start()
    left_nothing(live)


async def cancel_once_recorded(event: str, path: Path, scope: anyio.CancelScope) -> None:
    """Cancel `scope` once the app has recorded `event` (in this process, or in a child's file)."""
    while event not in recorded(path):  # noqa: ASYNC110 - the app may record it in another process
        await anyio.sleep(0.005)
    scope.cancel()


@pytest.mark.anyio
async def test_a_cancellation_during_a_failed_starts_cleanup_lets_the_cleanup_finish(
    anyio_backend: str, tmp_path: Path
) -> None:
    for mode in modes_for(anyio_backend):
        path = tmp_path / f"{mode}.events"
        apps_contract.events.clear()
        live = AsyncTestServer(
            "apps_contract:unhealthy_slow_shutdown_app",
            mode=mode,  # type: ignore[arg-type]
            env={"LIFESPAN_RECORD": str(path)} if mode == "process" else None,
            health_path="/health",
            startup_timeout=0.3,  # the health check never answers 2xx: the start fails, then stops what it started
            shutdown_timeout=2,
        )
        scope = anyio.CancelScope()
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as group:
                group.start_soon(cancel_once_recorded, "shutdown begins", path, scope)
                with scope:
                    await live.start()
        assert scope.cancelled_caught, f"{mode}: the cancellation was lost"
        assert recorded(path)[-1] == "shutdown", f"{mode}: the failed start's lifespan shutdown was cut"
        left_nothing(live)
        path.unlink(missing_ok=True)
        apps_contract.events.clear()
        with pytest.raises(ServerStartupError):  # not ServerStateError: nothing of the last start is still tracked
            await live.start()


@pytest.mark.anyio
async def test_a_cancelled_stop_that_gives_up_propagates_the_cancellation(anyio_backend: str) -> None:
    # Thread mode: loop mode's blocking shutdown would block the test's own loop, and a child can be killed.
    live = AsyncTestServer("apps_contract:blocking_shutdown_app", shutdown_timeout=0.01)
    await live.start()
    port = live.port
    with anyio.fail_after(WAIT), anyio.move_on_after(0.3) as scope:
        await live.stop()  # ends in ServerShutdownError after the forced exit; the cancellation must win
    assert scope.cancelled_caught, "ServerShutdownError replaced the cancellation"
    deadline = time.monotonic() + WAIT  # the blocked thread ends once its sleep does
    while server_threads(port) and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread, not an event
        await anyio.sleep(0.05)
    assert not server_threads(port)

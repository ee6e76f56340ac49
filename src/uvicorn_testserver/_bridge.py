"""The async faces' bridge to the blocking lifecycle, under asyncio or trio (through anyio).

A start or stop runs in a worker thread, so the caller's event loop is never blocked
and keeps serving (loop mode) or answering. Cancellation never leaves a server behind:
a cancelled start is abandoned at once and whatever it started is stopped, within its
bounds, before the cancellation propagates; a stop always finishes first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable

import anyio

from uvicorn_testserver._errors import ServerExceptionsError, ServerShutdownError
from uvicorn_testserver._lifecycle import ServerCore

__all__ = ["start", "stop"]

# How often a cancelled caller looks whether the worker it must wait for has finished.
_POLL = 0.005


async def start(core: ServerCore) -> None:
    """`core.start()` from async code; cancelling it abandons the start, stops what it started, then re-raises."""
    cancelled = threading.Event()
    outcome, interrupted = await _in_worker(lambda: core.start(cancelled))
    if interrupted is not None:
        cancelled.set()
        core.abandon()
        await _until_done(outcome)  # the abandoned start ends promptly
        if outcome.exception() is None:  # it had succeeded just before the cancellation
            stopped, _ = await _in_worker(lambda: _stop_quietly(core))
            await _until_done(stopped)
        raise interrupted
    outcome.result()


async def stop(core: ServerCore, shutdown_timeout: float | None = None) -> None:
    """`core.stop()` from async code; a cancellation lets the stop finish, then propagates."""
    outcome, interrupted = await _in_worker(lambda: core.stop(shutdown_timeout))
    if interrupted is not None:
        await _until_done(outcome)
        raise interrupted
    outcome.result()


async def _in_worker(function: Callable[[], None]) -> tuple[concurrent.futures.Future[None], BaseException | None]:
    """Run `function` in a worker thread; return its outcome, and the cancellation if one came first."""
    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

    def work() -> None:
        try:
            function()
        except BaseException as exc:  # noqa: BLE001 - handed over through `outcome`
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    try:
        await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class() as exc:
        return outcome, exc
    return outcome, None


async def _until_done(outcome: concurrent.futures.Future[None]) -> None:
    """Wait for a worker that cannot be interrupted (it has its own deadlines), whatever cancellations arrive.

    Shielded from anyio's cancel scopes; a native asyncio cancellation, which fires
    once, is caught and the wait goes on.
    """
    while not outcome.done():
        with contextlib.suppress(anyio.get_cancelled_exc_class()), anyio.CancelScope(shield=True):
            await anyio.sleep(_POLL)


def _stop_quietly(core: ServerCore) -> None:
    with contextlib.suppress(ServerExceptionsError, ServerShutdownError):  # the cancellation is what the caller gets
        core.stop()

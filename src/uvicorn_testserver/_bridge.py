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

import anyio
import anyio.lowlevel

from uvicorn_testserver._errors import ServerExceptionsError, ServerShutdownError
from uvicorn_testserver._lifecycle import ServerCore

__all__ = ["start", "stop"]


async def start(core: ServerCore) -> None:
    """`core.start()` from async code; cancelling it stops what was started, then re-raises."""
    cancelled = threading.Event()
    outcome: concurrent.futures.Future[None] = concurrent.futures.Future()

    def work() -> None:
        try:
            core.start(cancelled)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task below
            outcome.set_exception(exc)
        else:
            outcome.set_result(None)

    try:
        await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        cancelled.set()
        core.abandon()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(outcome.exception)  # the abandoned start ends promptly
            if outcome.exception() is None:  # it had succeeded just before the cancellation
                await anyio.to_thread.run_sync(_stop_quietly, core)
        raise
    outcome.result()


async def stop(core: ServerCore) -> None:
    """`core.stop()` from async code; a cancellation waits for the stop to finish, then propagates."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(core.stop)
    await anyio.lowlevel.checkpoint_if_cancelled()


def _stop_quietly(core: ServerCore) -> None:
    with contextlib.suppress(ServerExceptionsError, ServerShutdownError):  # the cancellation is what the caller gets
        core.stop()

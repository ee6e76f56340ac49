"""``mode="loop"``: uvicorn as a task on the caller's running asyncio event loop.

The core's start and stop steps are awaited on that same loop (by the async face's bridge),
so readiness, the health check, the stop sequence and the deadlines are the core's, and
nothing crosses a thread. For apps that share loop-bound objects (a connection pool, a
queue) with the test. A blocking call in the app blocks the test too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Literal

from uvicorn_testserver._core.run import Launch, done_within
from uvicorn_testserver._core.uvicorn_internals import StartupFailed
from uvicorn_testserver._runners.serving import ServingRun

__all__ = ["LoopRun"]


class LoopRun(ServingRun):
    """One run as a task on `loop`, which belongs to the caller; the core awaits it there (`InLoopRun`)."""

    in_loop: Literal[True] = True

    def __init__(self, launch: Launch, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready: asyncio.Future[None] = loop.create_future()
        self._serving = self.serving_for(launch, self._ready)
        self._task: asyncio.Task[None] | None = None
        self._ended: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()
        self._name = f"uvicorn-testserver {launch.settings.host}:{launch.sock.getsockname()[1]}"

    def launch(self) -> None:
        self._task = self._loop.create_task(self._serving.main(), name=self._name)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        crash = None if task.cancelled() else task.exception()
        if not self._ready.done():
            self._ready.set_exception(_ended_early(crash if crash is not None else asyncio.CancelledError()))
            self._ready.exception()  # retrieved: a start abandoned meanwhile never reads it
        self._ended.set_result(crash)

    async def wait_ready(self, timeout: float) -> bool:
        # Awaited directly, one hop: the serving task sets it, or its end does (`_task_done`). A caller that
        # gives up (the deadline, a cancellation) cancels it, and the serving task leaves it so.
        try:
            async with asyncio.timeout(timeout):
                await self._ready  # raises StartupFailed
        except TimeoutError:
            return False
        return True

    async def wait_ended(self, timeout: float) -> bool:
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout)
        return self._ended.done()

    def wait_ended_outside(self, timeout: float) -> bool:
        """From another thread (interpreter exit, say); the caller's loop must run, or be closed, meanwhile."""
        if self._task is None or self._loop.is_closed():
            return True  # never launched, or the caller's loop is gone and the task with it
        return done_within(self._ended, timeout)

    def is_alive(self) -> bool:
        return self._task is not None and not self._ended.done() and not self._loop.is_closed()

    def problem(self) -> tuple[str, BaseException | None] | None:
        return self.crash_problem(self._ended.result() if self._ended.done() else None, "its task")

    def left_behind(self) -> str:
        return "Something in the app ignores cancellation; its task is left behind on your event loop."


def _ended_early(crash: BaseException) -> BaseException:
    failure = StartupFailed(f"the server's task ended before it was ready: {crash!r}")
    failure.__cause__ = crash
    return failure

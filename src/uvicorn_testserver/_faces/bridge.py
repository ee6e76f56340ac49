"""The async faces' bridge to the lifecycle, under asyncio or trio (through anyio).

A start or stop runs elsewhere than the caller's task: in a thread of its own, started
before the first await (so there is always a worker to wait for), or, in loop mode, in
a task of its own on the caller's loop. The caller waits for it, and a cancellation
never leaves a server behind or a caller waiting on nothing:

* a cancelled start is abandoned (a startup under way is cancelled, and a lifespan startup
  that completed gets its shutdown), whatever it started is stopped, then the cancellation
  propagates;
* a cancelled stop finishes within its bounds, then the cancellation propagates;
* the app's errors stay in `errors` and never replace a cancellation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import sniffio

from uvicorn_testserver._core.engine import ServerCore
from uvicorn_testserver._core.errors import ServerExceptionsError, ServerShutdownError

__all__ = ["start", "stop"]


async def start(core: ServerCore, *, in_loop: bool = False) -> None:
    """`core.start()` from async code; cancelling it abandons the start, stops what it started, then re-raises."""
    cancelled = threading.Event()
    if in_loop:
        work = _Work.in_task(core.start_in_loop())
    else:
        work = _Work.in_thread(lambda: core.start(cancelled), f"start {core.where()}")
    interrupted = await work.wait(until_done=False)
    if interrupted is None:
        work.outcome.result()
        return
    cancelled.set()
    work.abandon(core)
    await work.finish()  # the abandoned start ends promptly, whatever else is cancelled meanwhile
    if work.outcome.exception() is None:  # it had started just before the cancellation
        await stop(core, in_loop=in_loop, interrupted=interrupted)
    raise interrupted


async def stop(
    core: ServerCore,
    shutdown_timeout: float | None = None,
    *,
    in_loop: bool = False,
    interrupted: BaseException | None = None,
) -> None:
    """`core.stop()` from async code. A cancellation (or `interrupted`, one the caller caught before) lets the
    stop finish, then propagates instead of any `ServerExceptionsError`: the app's errors stay in `errors`."""
    if in_loop:
        work = _Work.in_task(core.stop_in_loop(shutdown_timeout))
    else:
        work = _Work.in_thread(lambda: core.stop(shutdown_timeout), f"stop {core.where()}")
    interrupted = await work.wait(until_done=True) or interrupted
    if interrupted is None:
        work.outcome.result()
        return
    _keep_unraised(work.outcome)
    raise interrupted


def _keep_unraised(outcome: concurrent.futures.Future[None]) -> None:
    """Leave a stop's error where it belongs once a cancellation is what propagates: the app's errors stay in
    `errors`; a server that would not stop is said in its log (the core logged it)."""
    error = outcome.exception()
    if error is not None and not isinstance(error, ServerExceptionsError | ServerShutdownError):
        raise error  # a bug of the harness: never swallowed


class _Work:
    """A start or stop running apart from the caller: its outcome, and an event on the caller's loop once done."""

    def __init__(self) -> None:
        self.outcome: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.done = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def in_thread(cls, function: Callable[[], None], what: str) -> _Work:
        """Run `function` in a new daemon thread, started now: no cancellation can come before it exists."""
        work = cls()
        wake = _waker(work.done)

        def run() -> None:
            try:
                function()
            except BaseException as exc:  # noqa: BLE001 - handed over through `outcome`
                work.outcome.set_exception(exc)
            else:
                work.outcome.set_result(None)
            finally:
                wake()

        work._thread = threading.Thread(target=run, name=f"uvicorn-testserver {what}", daemon=True)
        work._thread.start()
        return work

    @classmethod
    def in_task(cls, coroutine: Coroutine[Any, Any, None]) -> _Work:
        """Run `coroutine` as a task of its own on the running asyncio loop, outside the caller's cancel scopes."""
        work = cls()
        work._task = asyncio.get_running_loop().create_task(coroutine)
        work._task.add_done_callback(work._task_done)
        return work

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self.outcome.set_exception(asyncio.CancelledError())
        elif (error := task.exception()) is not None:
            self.outcome.set_exception(error)
        else:
            self.outcome.set_result(None)
        self.done.set()

    def abandon(self, core: ServerCore) -> None:
        """Make a start give up promptly (it then stops what it started)."""
        if self._task is not None:
            self._task.cancel()
        else:
            core.abandon()

    async def wait(self, *, until_done: bool) -> BaseException | None:
        """Wait until the work is done, or `until_done=False` until the first cancellation; return that
        cancellation, or None."""
        try:
            await self.done.wait()
        except anyio.get_cancelled_exc_class() as exc:
            if until_done:
                await self.finish()
            return exc
        self._joined()
        return None

    async def finish(self) -> None:
        """Wait until the work is done, whatever is cancelled meanwhile: it has its own deadlines. Shielded from
        cancel scopes; a native asyncio cancellation, which fires once, is caught and the wait goes on."""
        while not self.done.is_set():
            with contextlib.suppress(anyio.get_cancelled_exc_class()), anyio.CancelScope(shield=True):
                await self.done.wait()
        self._joined()

    def _joined(self) -> None:
        """Once done, the thread's last act was to wake us: join it (at once), so no thread outlives the call."""
        if self._thread is not None:
            self._thread.join()


def _waker(event: anyio.Event) -> Callable[[], None]:
    """A function any thread may call to set `event` on the current event loop (never blocks)."""
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def wake_trio() -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the caller's run is over: nobody waits
                token.run_sync_soon(event.set)

        return wake_trio
    loop = asyncio.get_running_loop()

    def wake_asyncio() -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
            loop.call_soon_threadsafe(event.set)

    return wake_asyncio

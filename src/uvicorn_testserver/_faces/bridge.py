"""The async faces' bridge to the lifecycle, under asyncio or trio (through anyio).

In thread and loop mode the caller's own task drives the start or stop: it awaits each
wait of the core's steps on its event loop, woken by the server's thread (one hand-over
each way) or by the server's task on the same loop. A process-mode start or stop, whose
waits block, runs in a thread of its own, started before the first await (so there is
always a worker to wait for). A cancellation never leaves a server behind or a caller
waiting on nothing:

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
import math
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import sniffio

from uvicorn_testserver._core.engine import ServerCore
from uvicorn_testserver._core.errors import ServerExceptionsError, ServerShutdownError
from uvicorn_testserver._core.steps import Pause, Probe, Step, Steps, WaitEnded, WaitReady
from uvicorn_testserver._runners.thread import ThreadRun

__all__ = ["start", "stop"]


async def start(core: ServerCore) -> None:
    """`core.start()` from async code; cancelling it abandons the start, stops what it started, then re-raises."""
    if core.settings.mode != "process":
        async with _holding(core):
            interrupted, error = await _drive(core, core.start_steps(), abandon_on_cancel=True)
        if interrupted is None:
            return
        if error is None:  # asked just as the start completed
            await stop(core, interrupted=interrupted)
        raise interrupted  # not the start's own error: the caller gave up on it
    cancelled = threading.Event()
    work = _Work.in_thread(lambda: core.start(cancelled), f"start {core.where()}")
    interrupted = await work.wait(until_done=False)
    if interrupted is None:
        work.outcome.result()
        return
    cancelled.set()
    core.abandon()
    await work.finish()  # the abandoned start ends promptly, whatever else is cancelled meanwhile
    if work.outcome.exception() is None:  # it had started just before the cancellation
        await stop(core, interrupted=interrupted)
    raise interrupted


async def stop(
    core: ServerCore, shutdown_timeout: float | None = None, *, interrupted: BaseException | None = None
) -> None:
    """`core.stop()` from async code. A cancellation (or `interrupted`, one the caller caught before) lets the
    stop finish, then propagates instead of any `ServerExceptionsError`: the app's errors stay in `errors`."""
    error: BaseException | None = None
    if core.settings.mode != "process":
        async with _holding(core):
            try:
                cancelled, error = await _drive(core, core.stop_steps(shutdown_timeout), abandon_on_cancel=False)
                interrupted = cancelled or interrupted
                if error is None:
                    core.raise_app_errors()
            except BaseException as exc:  # noqa: BLE001 - decided below, as for a stop in a thread
                error = exc
    else:
        work = _Work.in_thread(lambda: core.stop(shutdown_timeout), f"stop {core.where()}")
        interrupted = await work.wait(until_done=True) or interrupted
        error = work.outcome.exception()
    if interrupted is None:
        if error is not None:
            raise error
        return
    _keep_unraised(error)
    raise interrupted


@contextlib.asynccontextmanager
async def _holding(core: ServerCore) -> AsyncIterator[None]:
    """Hold the core's start/stop lock for a start or stop driven on this loop. The loop never blocks on it:
    while another task or thread starts or stops the server, this one waits its turn, asleep."""
    delay = 0.0005
    while not core.lock.acquire(blocking=False):
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.02)
    try:
        yield
    finally:
        core.lock.release()


async def _drive(
    core: ServerCore, steps: Steps, *, abandon_on_cancel: bool
) -> tuple[BaseException | None, BaseException | None]:
    """Perform each of `steps` on the caller's loop; an exception goes back into the steps, which decide.

    The first cancellation during a start's own waits goes into the steps if `abandon_on_cancel` (the start
    then stops what it started, and re-raises it). Any other is kept, the waits after it shielded, and
    returned once the steps are done, as is one that comes as they end: the stop a start needs after it
    failed, and a stop, always finish. Returns the cancellation, if any, and the error the steps ended in
    after it (a failed start, a stop that would not end); without a cancellation their error is raised.
    """
    send: Callable[[Any], Step] = steps.send
    value: Any = None
    cancelled: BaseException | None = None
    while True:
        try:
            step = send(value)
        except StopIteration:
            break
        except BaseException as exc:
            if cancelled is None or exc is cancelled:
                raise
            return cancelled, exc
        while True:
            try:
                with anyio.CancelScope(shield=True) if cancelled is not None else contextlib.nullcontext():
                    send, value = steps.send, await _perform(core, step)
            except anyio.get_cancelled_exc_class() as exc:
                if cancelled is None and abandon_on_cancel and not isinstance(step, WaitEnded):
                    cancelled = exc
                    send, value = steps.throw, exc
                else:
                    cancelled = cancelled or exc
                    continue  # the same wait again (a native cancellation, which a shield does not stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the steps
                send, value = steps.throw, exc
            break
    if cancelled is None and _cancel_asked():  # one asked as the last wait ended: the caller has not resumed yet
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class() as exc:
            cancelled = exc
    return cancelled, None


def _cancel_asked() -> bool:
    """Whether the calling task has a cancellation coming at its next checkpoint (no checkpoint is taken)."""
    if sniffio.current_async_library() == "asyncio":
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # a native cancel()
            return True
    return anyio.current_effective_deadline() == -math.inf  # an enclosing cancel scope was cancelled


async def _perform(core: ServerCore, step: Step) -> Any:
    if isinstance(step, Pause):
        await anyio.sleep(step.seconds)
        return None
    if isinstance(step, Probe):  # a blocking GET: in a thread of its own
        answer: list[Any] = []
        work = _Work.in_thread(lambda: answer.append(core.perform(step)), f"probe {core.where()}")
        interrupted = await work.wait(until_done=False)
        if interrupted is not None:  # the start is abandoned: the server stops, so the GET ends at once
            core.abandon()
            await work.finish()
            raise interrupted
        work.outcome.result()
        return answer[0]
    run = core.current_run
    assert run is not None
    if run.in_loop:
        return await (run.wait_ready(step.timeout) if isinstance(step, WaitReady) else run.wait_ended(step.timeout))
    assert isinstance(run, ThreadRun), "a process-mode run is driven from a thread of its own"
    woken = anyio.Event()
    wake = [_waker(woken)]  # emptied after the wait: the run keeps its callbacks, not this loop

    def woke() -> None:
        for call in list(wake):
            call()

    (run.on_ready if isinstance(step, WaitReady) else run.on_ended)(woke)
    try:
        with anyio.move_on_after(step.timeout):
            await woken.wait()
    finally:
        wake.clear()
    if isinstance(step, WaitReady):
        return run.wait_ready(0)  # True, or its StartupFailed; False if the deadline passed
    # Woken by the thread's last act, it ends a moment later: joining it blocks the loop for no longer.
    return run.wait_ended(1.0 if woken.is_set() else 0)


def _keep_unraised(error: BaseException | None) -> None:
    """Leave a stop's error where it belongs once a cancellation is what propagates: the app's errors stay in
    `errors`; a server that would not stop is said in its log (the core logged it)."""
    if error is not None and not isinstance(error, ServerExceptionsError | ServerShutdownError):
        raise error  # a bug of the harness: never swallowed


class _Work:
    """Blocking work (a process-mode start or stop, a probe) in a thread of its own: its outcome, and an event
    on the caller's loop once done."""

    def __init__(self) -> None:
        self.outcome: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.done = anyio.Event()
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

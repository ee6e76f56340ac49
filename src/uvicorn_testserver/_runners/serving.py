"""What the asyncio-based runs share (thread and loop mode, and the process-mode child): uvicorn serving a
socket as the main task of an event loop, driven from other threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from uvicorn_testserver._core.app_errors import InFlight
from uvicorn_testserver._core.logs import ServerLog, capture_into
from uvicorn_testserver._core.run import Launch, on_loop
from uvicorn_testserver._core.uvicorn_internals import HarnessServer, StartupFailed, make_config

__all__ = ["Serving", "ServingRun"]

_T = TypeVar("_T")


# -- what the asyncio-based runs share ----------------------------------------------------------


@dataclass(eq=False)
class Serving:
    """uvicorn serving a socket as the main task of an event loop, driven from other threads.

    `ready` carries "ready" or `StartupFailed` across threads; a stop or force asked
    before the task exists is not lost (`main` refuses to serve).
    """

    server: HarnessServer
    sock: socket.socket
    log: ServerLog
    ready: concurrent.futures.Future[None] | asyncio.Future[None]  # asyncio's when awaited on the same loop
    stop_signal: int = signal.SIGTERM
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    cancelled: bool = False

    async def main(self) -> None:
        """The task's body: serve until asked to stop. Reports a start that failed through `ready`."""
        self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        if self.cancelled:  # the start was abandoned before this loop ran
            if not self.ready.done():
                self.ready.set_exception(StartupFailed("the start was abandoned before the server's loop ran"))
            return
        with capture_into(self.log):
            await self.server.serve_on(self.sock, self.ready)

    def ask_stop(self, grace: float, sig: int) -> None:
        self.server.ask_stop(grace, sig)
        # Still starting (a startup that hangs, say): abort it, ending its lifespan cleanly. Decided on the loop:
        # a server that finished its start meanwhile stops the graceful way, lifespan shutdown included.
        self.cancel(only_while_starting=True)

    def force(self) -> None:
        self.server.force()
        self.cancel()

    def cancel(self, *, only_while_starting: bool = False) -> None:
        if not (only_while_starting and self.server.has_started):
            self.cancelled = True  # a task that has not run yet refuses to serve
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            if on_loop(loop):  # loop mode: on the server's loop already
                self._cancel_task(task, only_while_starting)
                return
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._cancel_task, task, only_while_starting)

    def _cancel_task(self, task: asyncio.Task[Any], only_while_starting: bool) -> None:
        if not (only_while_starting and self.server.has_started):
            task.cancel()

    def in_flight(self) -> list[InFlight]:
        """The requests the app handles, once the loop finished the step it was in."""
        return self._after_step(self.server.in_flight, [])

    def settle(self) -> None:
        """Wait (at most 1 s) until the loop finishes the step it is in."""
        self._after_step(lambda: None, None)

    def _after_step(self, read: Callable[[], _T], fallback: _T, timeout: float = 1.0) -> _T:
        """`read()` on the loop once it finished the step it is in (at once on its own thread, or when it
        does not run); `fallback` if it has just closed or stays blocked for `timeout` seconds."""
        loop = self.loop
        if loop is None or on_loop(loop) or not loop.is_running():
            return read()
        answer: concurrent.futures.Future[_T] = concurrent.futures.Future()
        try:
            loop.call_soon_threadsafe(lambda: answer.set_result(read()))
            return answer.result(timeout)
        except (RuntimeError, TimeoutError):
            return fallback

    @property
    def started(self) -> bool:
        """True once the start succeeded (whatever happened after)."""
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None


class ServingRun:
    """What the runs serving through `Serving` in the test's own process share (thread and loop mode)."""

    stop_budget = 0.0
    _serving: Serving
    _forced = False

    @staticmethod
    def serving_for(launch: Launch, ready: concurrent.futures.Future[None] | asyncio.Future[None]) -> Serving:
        """uvicorn configured for `launch`, to serve its socket and report through `ready`."""
        with capture_into(launch.log):
            config = make_config(
                launch.settings.served_app, shutdown_timeout=launch.settings.shutdown_timeout, options=launch.options
            )
        server = HarnessServer(config, on_app_error=launch.on_app_error)
        return Serving(server, launch.sock, launch.log, ready, stop_signal=launch.settings.signal_number)

    def ask_stop(self, grace: float) -> None:
        self._serving.ask_stop(grace, self._serving.stop_signal)

    def force(self) -> None:
        self._forced = True
        self._serving.force()

    def kill(self) -> bool:
        return False  # a thread, or a task that ignores cancellation, cannot be ended from outside

    def settle(self) -> None:
        self._serving.settle()

    def in_flight(self) -> list[InFlight]:
        return self._serving.in_flight()

    def crash_problem(self, crash: BaseException | None, where: str) -> tuple[str, BaseException | None] | None:
        """`problem()` for a run whose `where` ended with `crash`."""
        # A forced exit cancels the serving task: that CancelledError is the harness's, not a crash.
        if crash is None or not self._serving.started or (self._forced and isinstance(crash, asyncio.CancelledError)):
            return None
        return f"crashed while serving: {where} ended with {crash!r}.", crash

    def release(self) -> None:
        pass

    def diagnostics(self) -> str:
        return ""

    def describe(self) -> str:
        return ""

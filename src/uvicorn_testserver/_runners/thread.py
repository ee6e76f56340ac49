"""``mode="thread"``: uvicorn on its own event loop in a daemon thread of the test process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Literal

from uvicorn_testserver._core.logs import capture_into
from uvicorn_testserver._core.run import Launch, done_within
from uvicorn_testserver._core.uvicorn_internals import StartupFailed, loop_factory
from uvicorn_testserver._runners.serving import ServingRun

__all__ = ["ThreadRun"]


class ThreadRun(ServingRun):
    """One run in a daemon thread that owns its event loop; a forced exit cancels the serving task."""

    in_loop: Literal[False] = False

    def __init__(self, launch: Launch) -> None:
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._serving = self.serving_for(launch, self._ready)
        self._crash: BaseException | None = None
        self._ended: concurrent.futures.Future[None] = concurrent.futures.Future()
        name = f"uvicorn-testserver {launch.settings.host}:{launch.sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self.serve, name=name, daemon=True)

    def serve(self) -> None:
        """Run the event loop and serve on the calling thread until the server ends (what the thread runs)."""
        serving = self._serving
        with capture_into(serving.log):
            try:
                factory = loop_factory(serving.server.config)
                loop = factory() if factory is not None else asyncio.new_event_loop()
                if factory is None:
                    asyncio.set_event_loop(loop)  # as asyncio.Runner does, for get_event_loop() in the app
                try:
                    loop.run_until_complete(_tidied(serving.main()))
                finally:
                    if factory is None:
                        asyncio.set_event_loop(None)
                    loop.close()
            except StartupFailed as exc:  # the event loop could not be created
                self._ready.set_exception(exc)
            except BaseException as exc:  # noqa: BLE001 - reported by start() or stop(), never lost
                self._crash = exc
            finally:
                if not self._ready.done():
                    failure = StartupFailed(f"the server thread ended before the server was ready: {self._crash!r}")
                    failure.__cause__ = self._crash
                    self._ready.set_exception(failure)
                self._ended.set_result(None)  # the thread's last act

    def launch(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        return done_within(self._ready, timeout)

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the server's thread, or now) once the run is ready or failed to start: an event
        loop then waits for `wait_ready` without a thread of its own."""
        self._ready.add_done_callback(lambda _: callback())

    def on_ended(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the server's thread is about to end (or now, once it has, or never launched)."""
        if self._thread.ident is None:
            callback()
        else:
            self._ended.add_done_callback(lambda _: callback())

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def wait_ended(self, timeout: float) -> bool:
        if self._thread.ident is None:
            return True  # never launched
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def problem(self) -> tuple[str, BaseException | None] | None:
        return self.crash_problem(self._crash, "its event loop")

    def left_behind(self) -> str:
        return "The daemon thread is left behind."


async def _tidied(main: Coroutine[Any, Any, None]) -> None:
    """`main`, then what ``asyncio.Runner`` does as it closes, in the same run of the loop (each extra run costs
    a tenth of a start): the tasks the app left are cancelled and awaited, async generators and the default
    executor shut down, so nothing of the loop outlives it."""
    try:
        await main
    finally:
        loop, current = asyncio.get_running_loop(), asyncio.current_task()
        left = [task for task in asyncio.all_tasks() if task is not current]
        for task in left:
            task.cancel()
        for task, outcome in zip(left, await asyncio.gather(*left, return_exceptions=True), strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                loop.call_exception_handler(
                    {"message": "unhandled exception during the server's shutdown", "exception": outcome, "task": task}
                )
        await loop.shutdown_asyncgens()
        await loop.shutdown_default_executor()

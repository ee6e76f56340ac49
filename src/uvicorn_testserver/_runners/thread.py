"""``mode="thread"``: uvicorn on its own event loop in a daemon thread of the test process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Literal

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
                with asyncio.Runner(loop_factory=factory) as runner:
                    runner.run(serving.main())
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

"""What a run is: the interface between the lifecycle core (`engine`) and the per-mode runners.

`Launch` is what a run is given; `Run` is what the core asks of it, whatever the mode; how
the core waits for it is a `BlockingRun`'s (thread and process mode) or an `InLoopRun`'s,
awaited on the caller's own event loop (loop mode).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from uvicorn_testserver._core.app_errors import AppErrorSink, InFlight
from uvicorn_testserver._core.logs import ServerLog
from uvicorn_testserver._core.settings import ServerSettings

__all__ = [
    "FORCE_GRACE",
    "STOP_MARGIN",
    "AnyRun",
    "BlockingRun",
    "InLoopRun",
    "Launch",
    "Run",
    "RunFactory",
    "done_within",
    "on_loop",
]

#: Extra time a run gets past shutdown_timeout to finish lifespan shutdown before its exit is forced.
STOP_MARGIN = 1.0
#: How long a forced exit (and then a kill) may take: the run needs to be scheduled once more,
#: and shared CI machines stall for seconds.
FORCE_GRACE = 3.0


@dataclass(frozen=True, eq=False)
class Launch:
    """What a `Run` is given: the server's settings, its listening socket and where to report."""

    settings: ServerSettings
    sock: socket.socket
    options: dict[str, Any]  # uvicorn options for this run (TLS files written)
    log: ServerLog
    on_app_error: AppErrorSink


class Run(Protocol):
    """One start() .. stop() in one mode: what the core asks of every run, whatever the mode. Its methods are
    called from other threads than the one it serves on (except a loop-mode run's). How the core waits for
    it is a `BlockingRun`'s or an `InLoopRun`'s, told apart by `in_loop`.

    `stop_budget` is how long past ``shutdown_timeout`` the run may take to end on its
    own after `ask_stop` (a child process forces its own exit first).
    """

    stop_budget: float

    def launch(self) -> None:
        """Begin serving `Launch.sock`; return at once."""

    def is_alive(self) -> bool:
        """True while the server may still serve (not ended)."""

    def ask_stop(self, grace: float) -> None:
        """Ask for a stop that gives requests in flight `grace` seconds (or abandon a start in progress).

        Idempotent, any time after creation.
        """

    def force(self) -> None:
        """Force the exit the mode's own way, after the graceful stop overran."""

    def kill(self) -> bool:
        """The last resort after `force`; False where the mode has none."""

    def settle(self) -> None:
        """Wait (briefly, bounded) until the server has finished the step it is in, so `errors` are complete."""

    def in_flight(self) -> list[InFlight]:
        """The requests and WebSockets the app is handling now, once it finished the step it was in."""

    def problem(self) -> tuple[str, BaseException | None] | None:
        """After the run ended: why the end was not a clean stop (a sentence and the cause), or None."""

    def left_behind(self) -> str:
        """The sentence for a run that did not end even after `kill`: what is left behind."""

    def release(self) -> None:
        """Release what the run holds (helper threads, pipes) once it has ended or been given up on."""

    def diagnostics(self) -> str:
        """Extra text for error messages (a child's output), or ''."""

    def describe(self) -> str:
        """What names this run in messages besides its mode and address (``pid 4242``), or ''."""


class BlockingRun(Run, Protocol):
    """A run whose waits block (thread and process mode). The async faces await a thread-mode run's instead,
    woken by it (`ThreadRun.on_ready`), and block on a process-mode run's in a thread of their own."""

    in_loop: Literal[False]

    def wait_ready(self, timeout: float) -> bool:
        """Wait until ready: True; False when `timeout` passed; raise `StartupFailed` if the start failed."""

    def wait_ended(self, timeout: float) -> bool:
        """Wait until the run has ended; False when `timeout` passed."""


class InLoopRun(Run, Protocol):
    """A run on the caller's own event loop (loop mode): the core awaits its waits there, never blocking it."""

    in_loop: Literal[True]

    async def wait_ready(self, timeout: float) -> bool:
        """`BlockingRun.wait_ready`, awaited on the run's loop."""

    async def wait_ended(self, timeout: float) -> bool:
        """`BlockingRun.wait_ended`, awaited on the run's loop."""

    def wait_ended_outside(self, timeout: float) -> bool:
        """From another thread than the loop's (interpreter exit): True once ended or the loop has closed."""


AnyRun = BlockingRun | InLoopRun
RunFactory = Callable[[Launch], AnyRun]


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the caller runs on `loop` (loop mode, or the server's own thread), where it can act directly."""
    return asyncio._get_running_loop() is loop


def done_within(future: concurrent.futures.Future[Any], timeout: float) -> bool:
    """Wait for `future`: True once it has a result, False after `timeout`; its exception is raised."""
    try:
        future.result(timeout)
    except TimeoutError:
        return False
    return True

"""Stateful property tests of the server lifecycle, over every face, mode and anyio backend.

A Hypothesis state machine drives one server through random sequences of starts, stops
(with valid and invalid per-call timeouts), requests (plain, failing, streamed and left
early, WebSockets), `expect_errors` blocks, `wait_idle` calls and, on the async face,
starts and stops cancelled at random points. A model of what the library promises is
checked after every step:

* nothing hangs: every call runs under a watchdog; a call that overruns fails the test with
  a dump of every thread's stack (and the asyncio tasks) instead of hanging the run;
* only documented errors escape: the `ServerError` family, `TypeError`/`ValueError` for a bad
  argument, `AssertionError` from an `expect_errors` whose errors did not come, `TimeoutError`
  from `wait_idle` while something may be in flight, and the cancellation where one was asked;
* no app error is lost: what the app raised (and no `expect_errors` took) is in `errors` until the
  next start, and the stop that ends the run raises it as `ServerExceptionsError`, once;
* a cancelled start leaves nothing running; a cancelled stop finishes, then the cancellation
  propagates (not the app's errors, which stay in `errors`); a cancellation asked before the call
  could have finished (the app's lifespan takes a known time) is the call's outcome;
* nothing leaks: once stopped, the port is free, the library's threads are gone, the file
  descriptors are back to their baseline, a child process has exited, every lifespan startup that
  completed got its shutdown, no task is left on the test's event loop and (asyncio) the loop
  watches none of the server's descriptors; what an example dropped unclosed warns when collected.

The async face runs on a persistent event loop in a thread of its own (an anyio `BlockingPortal`,
under asyncio or trio): loop mode needs one loop for the server's whole life.

`test_a_start_cancelled_as_it_ends_...` sweeps the cancellations with which the machine found
library bugs, deterministically enough to fail on every run while they are there.

Runs derandomized and short by default (about a minute for the file); set
``UVICORN_TESTSERVER_PROPERTIES=long`` for a long randomized run with shrinking, by hand, and
``UVICORN_TESTSERVER_PROPERTIES_STATS=1`` (with ``-s``) to print how the cancellations and stops turned out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import itertools
import math
import os
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import anyio
import anyio.lowlevel
import httpx
import pytest
import requests
from anyio.from_thread import BlockingPortal
from hypothesis import HealthCheck, Phase, settings
from hypothesis import event as _hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import apps_properties
from apps import alive, fd_count, port_is_free
from uvicorn_testserver import AsyncTestServer, ServerExceptionsError, ServerStateError, UvicornTestServer

T = TypeVar("T")

#: The watchdog: no call may take longer. The documented bounds are startup_timeout (10 s below) for a
#: start, and shutdown_timeout (2 s) plus a few seconds of forced exit for a stop.
STEP_DEADLINE = 30.0
#: How long a leak may take to clear once a call returned (a thread ending just after it set its result).
SETTLE = 2.0
CLIENT_TIMEOUT = 10.0
FD_SLACK = 0
SHUTDOWN_DELAY = apps_properties.SHUTDOWN_DELAY
SERVER_OPTIONS: dict[str, Any] = {"startup_timeout": 10.0, "shutdown_timeout": 2.0, "propagate_logs": False}

# -- settings --------------------------------------------------------------------------------------

STATS: collections.Counter[str] = collections.Counter()
LONG = os.environ.get("UVICORN_TESTSERVER_PROPERTIES", "") == "long"


def profile(examples: int, steps: int) -> settings:
    """The CI profile (derandomized, bounded, no shrinking: a failure prints its steps unshrunk), or the long one."""
    if LONG:
        return settings(
            max_examples=examples * 10,
            stateful_step_count=steps * 3,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
        phases=[Phase.explicit, Phase.generate],
    )


# -- the watchdog ----------------------------------------------------------------------------------


class Hang(AssertionError):
    """A call did not return within `STEP_DEADLINE`: the message holds every thread's stack."""


def stack_dump(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Every thread's stack, and the tasks of `loop` (an asyncio loop running in another thread), as text."""
    frames = sys._current_frames()
    parts: list[str] = []
    for thread in threading.enumerate():
        if thread is threading.current_thread():
            continue  # the watchdog's own, waiting
        parts.append(f"\n--- thread {thread.name!r} (daemon={thread.daemon}) ---\n")
        frame = frames.get(thread.ident) if thread.ident is not None else None
        parts.extend(traceback.format_stack(frame) if frame is not None else ["(no frame)\n"])
    if loop is not None:
        for _ in range(3):  # the set of tasks may change while it is read from this thread
            try:
                tasks = list(asyncio.all_tasks(loop))
            except RuntimeError:
                continue
            for task in tasks:
                parts.append(f"\n--- task {task.get_name()!r} ---\n{await_chain(task.get_coro())}")
            break
    return "".join(parts)


def await_chain(awaitable: object) -> str:
    """Where a coroutine is suspended: each coroutine (or async generator) it awaits, innermost last, then what
    the innermost awaits (a future, say). A task's own stack shows only its outermost frame."""
    lines: list[str] = []
    for _ in range(100):
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
        frame = frame or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(f"  awaiting {awaitable!r}\n")
            break
        lines.extend(traceback.format_stack(frame, limit=1))
        inner = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
        awaitable = inner if inner is not None else getattr(awaitable, "gi_yieldfrom", None)
        if awaitable is None:
            break
    return "".join(lines)


@dataclass
class Outcome(Generic[T]):
    """What a call returned or raised, carried back from the thread or loop it ran on."""

    value: T | None = None
    error: BaseException | None = None
    done: bool = False

    def __str__(self) -> str:
        return f"raised {brief(self.error)}" if self.error is not None else f"returned {self.value!r}"

    def unwrap(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]  # set with done


def call_in_thread(what: str, function: Callable[[], T], deadline: float = STEP_DEADLINE) -> T:
    """`function()` in a daemon thread, abandoned with a `Hang` (and a stack dump) if it overruns `deadline`."""
    outcome: Outcome[T] = Outcome()

    def body() -> None:
        try:
            outcome.value = function()
        except BaseException as exc:  # noqa: BLE001 - carried back to the test's thread
            outcome.error = exc
        outcome.done = True

    thread = threading.Thread(target=body, name=f"properties call {what}", daemon=True)
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        raise Hang(f"{what} did not return within {deadline}s (the watchdog's deadline):\n{stack_dump()}")
    return outcome.unwrap()


class EventLoopThread:
    """A persistent event loop (asyncio or trio) in a daemon thread, run through an anyio `BlockingPortal`."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.loop: asyncio.AbstractEventLoop | None = None
        self._portal: BlockingPortal | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"properties {backend} loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(STEP_DEADLINE):
            raise Hang(f"the {backend} event loop did not start:\n{stack_dump()}")
        if self._failure is not None:
            raise self._failure

    def _main(self) -> None:
        try:
            anyio.run(self._serve, backend=self.backend)
        except BaseException as exc:  # noqa: BLE001 - reported by __init__ or close
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        if self.backend == "asyncio":
            self.loop = asyncio.get_running_loop()
        async with BlockingPortal() as portal:
            self._portal = portal
            self._ready.set()
            await portal.sleep_until_stopped()

    def run(self, what: str, function: Callable[[], Awaitable[T]], deadline: float = STEP_DEADLINE) -> T:
        """Await `function()` on the loop; a `Hang` (and a stack dump) if it overruns `deadline`."""
        assert self._portal is not None

        async def body() -> Outcome[T]:
            outcome: Outcome[T] = Outcome()
            try:
                outcome.value = await function()
            except BaseException as exc:  # noqa: BLE001 - carried back (a stray cancellation too)
                outcome.error = exc
            outcome.done = True
            return outcome

        future = self._portal.start_task_soon(body)
        try:
            outcome = future.result(deadline)
        except TimeoutError:
            raise Hang(
                f"{what} did not return within {deadline}s (the watchdog's deadline):\n{stack_dump(self.loop)}"
            ) from None
        return outcome.unwrap()

    def close(self, deadline: float = STEP_DEADLINE) -> None:
        """Stop the loop, cancelling what still runs on it; give up (the thread is a daemon) after `deadline`."""
        portal = self._portal
        if portal is not None:
            with contextlib.suppress(Exception):
                call_in_thread("stopping the event loop", lambda: portal.call(portal.stop, True), deadline)
        self._thread.join(deadline)


# -- probes ----------------------------------------------------------------------------------------


def library_threads() -> set[threading.Thread]:
    """The live threads of uvicorn-testserver (servers, child readers, async bridges), by their names."""
    return {thread for thread in threading.enumerate() if "uvicorn-testserver" in thread.name and thread.is_alive()}


def within(seconds: float, check: Callable[[], bool]) -> bool:
    """Poll `check` until it is true or `seconds` passed; its last answer."""
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def brief(error: BaseException | None) -> str:
    """An error's type and the first line of its message."""
    if error is None:
        return "nothing"
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0]}" if first else type(error).__name__


def described(error: BaseException) -> tuple[str, str]:
    """``("RuntimeError", "boom 3")`` for an app error, in the test's process or carried from a child."""
    return getattr(error, "type_name", type(error).__name__), str(getattr(error, "message", error))


def sync_websocket_echo(url: str, text: str) -> str:
    from websockets.sync.client import connect

    with connect(url, open_timeout=CLIENT_TIMEOUT, close_timeout=CLIENT_TIMEOUT) as websocket:
        websocket.send(text)
        reply = websocket.recv(timeout=CLIENT_TIMEOUT)
    assert isinstance(reply, str)
    return reply


# -- what a step draws -----------------------------------------------------------------------------


class _Default:
    def __repr__(self) -> str:
        return "<not given>"


DEFAULT: Any = _Default()  # a keyword argument left out

GOOD_GRACES: list[object] = [DEFAULT, None, 0, 0.01, 0.5]
GOOD_IDLE_TIMEOUTS: list[object] = [DEFAULT, 0, 0.01, 0.5, 5.0]
GOOD_GRACE = st.sampled_from(GOOD_GRACES)
GOOD_IDLE_TIMEOUT = st.sampled_from(GOOD_IDLE_TIMEOUTS)
BAD_SECONDS = st.sampled_from([math.nan, math.inf, -1, "1", True])


def one_of_these(value: object, good: list[object]) -> bool:
    """Whether `value` is one of the `good` values drawn (by identity: ``True == 1`` and ``nan != nan``)."""
    return any(value is candidate for candidate in good)


@dataclass(frozen=True)
class Cancel:
    """How a start or stop is cancelled, and when: a number of `ticks` (checkpoints, loop iterations) after

    * ``"call"``: the call began;
    * ``"change"``: the server was seen to change, checked at every checkpoint (a start: `is_running` turned
      true, just after it completed; a stop: its port was free, before lifespan shutdown);
    * ``"lifespan"``: the app's lifespan startup completed (a start: uvicorn then starts listening) or its
      lifespan shutdown began (a stop), as the app counts them (`apps_properties.lifespan_events`);

    or ``"deadline"``: ``anyio.move_on_after(delay)``. `native`: by ``task.cancel()`` (asyncio only; a cancel
    scope under trio) rather than a cancel scope.
    """

    when: str
    ticks: int = 0
    delay: float = 0.0
    native: bool = False

    def __repr__(self) -> str:
        if self.when == "deadline":
            return f"Cancel(move_on_after({self.delay}))"
        how = "task.cancel()" if self.native else "cancel scope"
        return f"Cancel({how}, {self.ticks} ticks after the {self.when})"


CANCELS = st.one_of(
    st.builds(Cancel, st.just("call"), ticks=st.integers(0, 40), native=st.booleans()),
    st.builds(Cancel, st.sampled_from(["change", "lifespan"]), ticks=st.integers(0, 8), native=st.booleans()),
    st.builds(Cancel, st.just("deadline"), delay=st.sampled_from([0.0, 0.001, 0.005, 0.02, 0.05, 0.15, 0.4])),
)


@dataclass
class Cancelled:
    """What a cancelled call did: never began, completed before the cancellation, raised, or was cancelled."""

    entered: bool = False
    changed_after: float | None = None  # seconds from the call to the change awaited ("change", "lifespan")
    asked_after: float | None = None  # seconds from the call to the cancellation (all but "deadline")
    completed: bool = False
    cancelled: bool = False
    error: BaseException | None = None


# -- the faces behind one interface ----------------------------------------------------------------


class Driver:
    """One server and its clients; every call bounded by the watchdog. Subclassed per face."""

    server: UvicornTestServer | AsyncTestServer
    events_file: str | None = None  # process mode: where the child writes its lifespan events

    def _make_server(self, face: type[UvicornTestServer] | type[AsyncTestServer], mode: str) -> Any:
        if mode != "process":
            return face(apps_properties.app, mode=mode, **SERVER_OPTIONS)  # type: ignore[arg-type]
        descriptor, self.events_file = tempfile.mkstemp(prefix="apps_properties-", suffix=".events")
        os.close(descriptor)
        env = {"APPS_PROPERTIES_EVENTS": self.events_file}
        return face("apps_properties:app", mode=mode, env=env, **SERVER_OPTIONS)  # type: ignore[arg-type]

    def lifespan_events(self) -> dict[str, int]:
        """The app's lifespan startups completed and shutdowns begun, in this process or (process mode) its children."""
        if self.events_file is None:
            return dict(apps_properties.lifespan_events)
        with open(self.events_file) as events:
            lines = events.read().split()
        return {"startup": lines.count("startup"), "shutdown": lines.count("shutdown")}

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, grace: object) -> None:
        raise NotImplementedError

    def wait_idle(self, timeout: object) -> None:
        raise NotImplementedError

    def get(self, path: str) -> tuple[int, str]:
        raise NotImplementedError

    def stream_partly(self, chunks: int) -> bytes:
        raise NotImplementedError

    def websocket_echo(self, text: str) -> str:
        raise NotImplementedError

    def expect(self, path: str, at_least: int, at_most: int | None) -> tuple[int, list[BaseException]]:
        """GET `path` in ``expect_errors(RuntimeError, at_least=..., at_most=...)``: the status and what it took."""
        raise NotImplementedError

    def errors(self) -> list[BaseException]:
        raise NotImplementedError

    def left_on_the_loop(self) -> list[str]:
        """What the server left on the test's event loop: tasks, and (asyncio) file descriptors it still watches."""
        return []

    def cancelled_start(self, cancel: Cancel) -> Cancelled:
        raise NotImplementedError

    def cancelled_stop(self, cancel: Cancel, grace: object) -> Cancelled:
        raise NotImplementedError

    def close(self, deadline: float) -> None:
        if self.events_file is not None:
            with contextlib.suppress(OSError):
                os.remove(self.events_file)


def _grace(grace: object) -> dict[str, Any]:
    return {} if grace is DEFAULT else {"shutdown_timeout": grace}


def _timeout(timeout: object) -> tuple[Any, ...]:
    return () if timeout is DEFAULT else (timeout,)


class SyncDriver(Driver):
    """`UvicornTestServer`, each call in a helper thread, with blocking clients."""

    def __init__(self, mode: str) -> None:
        self.sync: UvicornTestServer = self._make_server(UvicornTestServer, mode)
        self.server = self.sync

    def start(self) -> None:
        call_in_thread("start()", self.sync.start)

    def stop(self, grace: object) -> None:
        call_in_thread(f"stop({_grace(grace)})", lambda: self.sync.stop(**_grace(grace)))

    def wait_idle(self, timeout: object) -> None:
        call_in_thread(f"wait_idle{_timeout(timeout)}", lambda: self.sync.wait_idle(*_timeout(timeout)))

    def _get(self, path: str) -> tuple[int, str]:
        response = requests.get(self.server.url(path), timeout=CLIENT_TIMEOUT)
        return response.status_code, response.text

    def get(self, path: str) -> tuple[int, str]:
        return call_in_thread(f"GET {path}", lambda: self._get(path))

    def stream_partly(self, chunks: int) -> bytes:
        def read() -> bytes:
            with requests.get(self.server.url("/stream"), stream=True, timeout=CLIENT_TIMEOUT) as response:
                parts = response.iter_content(1024)
                return b"".join(next(parts) for _ in range(chunks))

        return call_in_thread("GET /stream, partly", read)

    def websocket_echo(self, text: str) -> str:
        def echo() -> str:
            with self.sync.websocket_connect("/ws", open_timeout=CLIENT_TIMEOUT) as websocket:
                websocket.send(text)
                reply = websocket.recv(timeout=CLIENT_TIMEOUT)
            assert isinstance(reply, str)
            return reply

        return call_in_thread("WebSocket /ws", echo)

    def expect(self, path: str, at_least: int, at_most: int | None) -> tuple[int, list[BaseException]]:
        def block() -> tuple[int, list[BaseException]]:
            with self.server.expect_errors(RuntimeError, at_least=at_least, at_most=at_most) as taken:
                status, _ = self._get(path)
            return status, list(taken)

        return call_in_thread(f"expect_errors(RuntimeError, {at_least}, {at_most}) around GET {path}", block)

    def errors(self) -> list[BaseException]:
        return call_in_thread("errors", lambda: self.server.errors)


class AsyncDriver(Driver):
    """`AsyncTestServer` on a persistent event loop; httpx (and the face's own client under asyncio)."""

    def __init__(self, mode: str, backend: str) -> None:
        self.backend = backend
        self.loop = EventLoopThread(backend)
        self.live: AsyncTestServer = self._make_server(AsyncTestServer, mode)
        self.server = self.live
        self._loop_tasks: set[Any] = self.loop.run("the loop's tasks", self._tasks)
        self._loop_fds: dict[int, str] = self.loop.run("the loop's watched fds", self._watched)

    async def _tasks(self) -> set[Any]:
        """The tasks on the loop but the caller (asyncio's, or trio's whole task tree)."""
        if self.backend == "asyncio":
            return asyncio.all_tasks() - {asyncio.current_task()}
        import trio

        tasks, todo = set(), [trio.lowlevel.current_root_task()]
        while todo:
            task = todo.pop()
            if task is not None:
                tasks.add(task)
                todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
        return tasks - {trio.lowlevel.current_task()}

    def start(self) -> None:
        self.loop.run("start()", self.live.start)

    def stop(self, grace: object) -> None:
        self.loop.run(f"stop({_grace(grace)})", lambda: self.live.stop(**_grace(grace)))

    def wait_idle(self, timeout: object) -> None:
        self.loop.run(f"wait_idle{_timeout(timeout)}", lambda: self.live.wait_idle(*_timeout(timeout)))

    async def _get(self, path: str) -> tuple[int, str]:
        if self.backend == "asyncio" and path == "/":  # the face's own client, closed by stop()
            response = await self.live.client.get(path)
            return response.status_code, await response.text()
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            answer = await client.get(self.server.url(path))
            return answer.status_code, answer.text

    def get(self, path: str) -> tuple[int, str]:
        return self.loop.run(f"GET {path}", lambda: self._get(path))

    def stream_partly(self, chunks: int) -> bytes:
        async def read() -> bytes:
            # A plain socket: httpx's stream, left early, leaves unclosed async generators behind under trio.
            got = b""
            request = f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1:{self.server.port}\r\n\r\n".encode()
            with anyio.fail_after(CLIENT_TIMEOUT):
                async with await anyio.connect_tcp("127.0.0.1", self.server.port) as stream:
                    await stream.send(request)
                    while got.count(b".\r\n") < chunks:  # each chunk (chunked encoding) ends with a dot
                        got += await stream.receive()
            assert got.startswith(b"HTTP/1.1 200 "), got[:100]
            return got.partition(b"\r\n\r\n")[2]

        return self.loop.run("GET /stream, partly", read)

    def websocket_echo(self, text: str) -> str:
        async def echo() -> str:
            if self.backend == "trio":  # the face's WebSocket client is asyncio's: a blocking one in a thread
                url = self.server.ws_url + "/ws"
                return await anyio.to_thread.run_sync(sync_websocket_echo, url, text)
            async with self.live.websocket_connect("/ws", open_timeout=CLIENT_TIMEOUT) as websocket:
                await websocket.send(text)
                reply = await asyncio.wait_for(websocket.recv(), CLIENT_TIMEOUT)
            assert isinstance(reply, str)
            return reply

        return self.loop.run("WebSocket /ws", echo)

    def expect(self, path: str, at_least: int, at_most: int | None) -> tuple[int, list[BaseException]]:
        async def block() -> tuple[int, list[BaseException]]:
            with self.server.expect_errors(RuntimeError, at_least=at_least, at_most=at_most) as taken:
                status, _ = await self._get(path)
            return status, list(taken)

        return self.loop.run(f"expect_errors(RuntimeError, {at_least}, {at_most}) around GET {path}", block)

    def errors(self) -> list[BaseException]:
        async def read() -> list[BaseException]:
            return self.server.errors

        return self.loop.run("errors", read)

    async def _watched(self) -> dict[int, str]:
        """asyncio: the file descriptors the loop's selector watches, each with what it is and who reads it."""
        selector = getattr(asyncio.get_running_loop(), "_selector", None) if self.backend == "asyncio" else None
        if selector is None:
            return {}
        watched = {}
        for key in list(selector.get_map().values()):
            try:
                target = os.readlink(f"/proc/self/fd/{key.fd}")
            except OSError:
                target = "a closed descriptor"
            reader = getattr(key.data[0], "_callback", None) if key.data[0] is not None else None
            watched[key.fd] = f"fd {key.fd} ({target}) read by {getattr(reader, '__qualname__', reader)}"
        return watched

    def left_on_the_loop(self) -> list[str]:
        async def left() -> list[str]:
            end = time.monotonic() + SETTLE
            while True:
                tasks = await self._tasks() - self._loop_tasks
                fds = [what for fd, what in (await self._watched()).items() if fd not in self._loop_fds]
                if not (tasks or fds) or time.monotonic() > end:
                    return sorted(repr(task) for task in tasks) + sorted(fds)
                await anyio.sleep(0.005)

        return self.loop.run("what is left on the loop", left)

    async def _cancelled(
        self, call: Callable[[], Awaitable[Any]], cancel: Cancel, changed: Callable[[], bool], event: str
    ) -> Cancelled:
        """Await `call()` and cancel it the way `cancel` says (`changed`: whether the server changed; `event`:
        the lifespan event, ``"startup"`` or ``"shutdown"``)."""
        lifespan_events = self.lifespan_events()

        def lifespan_moved() -> bool:
            return self.lifespan_events()[event] > lifespan_events[event]

        result = Cancelled()
        began = time.monotonic()

        async def attempt() -> None:
            result.entered = True
            try:
                await call()
            except anyio.get_cancelled_exc_class():
                result.cancelled = True
                raise
            except Exception as exc:  # noqa: BLE001 - judged by the machine
                result.error = exc
            else:
                result.completed = True

        async def until_due() -> None:
            if cancel.when != "call":
                awaited = changed if cancel.when == "change" else lifespan_moved
                end = time.monotonic() + STEP_DEADLINE / 3
                while not (result.completed or result.cancelled or result.error):
                    if awaited():
                        result.changed_after = time.monotonic() - began
                        break
                    if time.monotonic() > end:
                        return
                    await anyio.lowlevel.checkpoint()
            for _ in range(cancel.ticks):
                await anyio.lowlevel.checkpoint()

        if cancel.when == "deadline":
            with anyio.move_on_after(cancel.delay):
                await attempt()
        elif cancel.native and self.backend == "asyncio":

            async def in_task() -> None:
                with contextlib.suppress(asyncio.CancelledError):
                    await attempt()

            task = asyncio.get_running_loop().create_task(in_task())
            await until_due()
            result.asked_after = time.monotonic() - began
            task.cancel()
            await asyncio.wait({task})
        else:
            scope = anyio.CancelScope()

            async def in_scope() -> None:
                with scope:
                    await attempt()

            async with anyio.create_task_group() as group:
                group.start_soon(in_scope)
                await until_due()
                result.asked_after = time.monotonic() - began
                scope.cancel()
        return result

    def cancelled_start(self, cancel: Cancel) -> Cancelled:
        def running() -> bool:
            return self.live.is_running

        return self.loop.run(
            f"start() cancelled by {cancel!r}", lambda: self._cancelled(self.live.start, cancel, running, "startup")
        )

    def cancelled_stop(self, cancel: Cancel, grace: object) -> Cancelled:
        port = self.live.port

        def port_closed() -> bool:
            return port_is_free(port)

        return self.loop.run(
            f"stop({_grace(grace)}) cancelled by {cancel!r}",
            lambda: self._cancelled(lambda: self.live.stop(**_grace(grace)), cancel, port_closed, "shutdown"),
        )

    def close(self, deadline: float) -> None:
        self.loop.close(deadline)
        super().close(deadline)


# -- the machine -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppError:
    """An error the model knows the app raised."""

    kind: str  # "RuntimeError" or "ValueError"
    token: int

    @property
    def described(self) -> tuple[str, str]:
        return self.kind, f"boom {self.token}"


def boom(kind: str, token: int) -> str:
    return f"/boom?kind={'value' if kind == 'ValueError' else 'runtime'}&token={token}"


def step(method: Callable[..., None]) -> Callable[..., None]:
    """A rule or invariant: once one failed, the machine is broken and its teardown only cleans up."""

    @functools.wraps(method)
    def wrapper(self: LifecycleMachine, *args: Any, **kwargs: Any) -> None:
        if self.broken:
            return
        try:
            method(self, *args, **kwargs)
        except Hang as hang:
            self.broken = self.hung = True
            hang.add_note(self.describe())
            raise
        except BaseException:
            self.broken = True
            raise

    return wrapper


_warmed: set[tuple[str, str, str]] = set()


class LifecycleMachine(RuleBasedStateMachine):
    """The lifecycle of one server, and the model of what it promises. Subclassed per face, mode and backend."""

    FACE: ClassVar[str] = "sync"
    MODE: ClassVar[str] = "thread"
    BACKEND: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False
        self.hung = False  # a call is still stuck: the teardown does not wait for it again
        self.driver: Driver = (
            SyncDriver(self.MODE) if self.FACE == "sync" else AsyncDriver(self.MODE, self.BACKEND or "asyncio")
        )
        # The model.
        self.running = False
        self.app_errors: list[AppError] = []  # raised by the app since the last start, not taken by expect_errors
        self.maybe_busy = False  # a stream or WebSocket may still be in flight on the server
        self.port: int | None = None
        self.pids: set[int] = set()
        self.tokens = itertools.count()
        try:
            self._warm_up()
        except BaseException:
            self.driver.close(1.0)
            raise
        self.base_threads = library_threads()
        self.base_fds = fd_count()
        self.base_lifespan = self.driver.lifespan_events()

    def _lifespan_balance(self) -> int:
        """The app's lifespan startups completed minus shutdowns begun since the machine began."""
        events, base = self.driver.lifespan_events(), self.base_lifespan
        return (events["startup"] - base["startup"]) - (events["shutdown"] - base["shutdown"])

    def describe(self) -> str:
        """The model and the server as they were, and the server's log, for a failure report."""
        server = self.driver.server
        return (
            f"model: running={self.running} errors={[e.described for e in self.app_errors]} busy={self.maybe_busy} "
            f"port={self.port}\nserver: {server!r}\n--- server log ---\n{server.log.text[-4000:]}"
        )

    @property
    def async_face(self) -> bool:
        return self.FACE == "async"

    def _warm_up(self) -> None:
        """Once per configuration: a full cycle, so imports, pools and caches exist before the baselines."""
        key = (self.FACE, self.MODE, self.BACKEND)
        if key in _warmed:
            return
        self.driver.start()
        assert self.driver.get("/") == (200, "hello")
        self.driver.stream_partly(1)
        assert self.driver.websocket_echo("warm") == "echo warm"
        self.driver.wait_idle(5.0)
        self.driver.stop(DEFAULT)
        _warmed.add(key)

    # -- model updates --

    def _started(self) -> None:
        self.running = True
        self.app_errors = []
        self.maybe_busy = False
        self._note_where()

    def _note_where(self) -> None:
        self.port = self.driver.server.port
        pid = self.driver.server.pid
        if self.MODE == "process" and pid is not None:
            self.pids.add(pid)

    def _stopped(self) -> None:
        self.running = False
        self.maybe_busy = False

    def _check_stop_outcome(self, error: BaseException | None, what: str) -> None:
        """The stop that ends a run raises the app's errors once, as `ServerExceptionsError`; any other stop is
        quiet. Updates the model."""
        raises = self.running and bool(self.app_errors)
        event(f"a stop that raises the app's errors: {raises}")
        self._stopped()
        if not raises:
            if error is not None:
                raise AssertionError(f"{what} raised {brief(error)}; nothing was due") from error
            return
        if error is None:
            raise AssertionError(f"{what} ended a run in which the app raised {self.app_errors} and raised nothing")
        if not isinstance(error, ServerExceptionsError):
            raise AssertionError(f"{what} raised {brief(error)} instead of ServerExceptionsError") from error
        assert [described(e) for e in error.exceptions] == [e.described for e in self.app_errors]

    def _attempt(self, call: Callable[[], T]) -> Outcome[T]:
        """`call()`'s value or error; a watchdog `Hang` is raised at once."""
        try:
            return Outcome(value=call(), done=True)
        except Hang:
            raise
        except BaseException as exc:  # noqa: BLE001 - judged by the rule
            return Outcome(error=exc)

    # -- rules --

    @initialize()
    @step
    def first_start(self) -> None:
        self.driver.start()
        self._started()

    @rule()
    @step
    def start(self) -> None:
        outcome = self._attempt(self.driver.start)
        if self.running:
            if not isinstance(outcome.error, ServerStateError):
                raise AssertionError(f"a second start() {outcome}, not ServerStateError") from outcome.error
            return  # nothing changed: the invariants check
        outcome.unwrap()
        self._started()

    @rule(grace=st.one_of(GOOD_GRACE, BAD_SECONDS))
    @step
    def stop(self, grace: object) -> None:
        outcome = self._attempt(lambda: self.driver.stop(grace))
        if not one_of_these(grace, GOOD_GRACES):
            if not isinstance(outcome.error, TypeError | ValueError):
                raise AssertionError(
                    f"stop(shutdown_timeout={grace!r}) {outcome}, not TypeError/ValueError"
                ) from outcome.error
            return  # nothing changed (still running if it was): the invariants check
        self._check_stop_outcome(outcome.error, f"stop({_grace(grace)})")

    @rule(timeout=st.one_of(GOOD_IDLE_TIMEOUT, BAD_SECONDS))
    @step
    def wait_idle(self, timeout: object) -> None:
        outcome = self._attempt(lambda: self.driver.wait_idle(timeout))
        if not one_of_these(timeout, GOOD_IDLE_TIMEOUTS):
            if not isinstance(outcome.error, TypeError | ValueError):
                raise AssertionError(f"wait_idle({timeout!r}) {outcome}, not TypeError/ValueError") from outcome.error
            return
        if outcome.error is None:
            self.maybe_busy = False
            return
        # Only a stream or WebSocket that may still be winding down may make a short wait time out.
        may_time_out = self.running and self.maybe_busy and timeout is not DEFAULT and float(timeout) < 1  # type: ignore[arg-type]
        if not (may_time_out and isinstance(outcome.error, TimeoutError)):
            raise AssertionError(
                f"wait_idle({timeout!r}) {outcome} (running={self.running}, busy={self.maybe_busy})"
            ) from outcome.error

    # No rule has a precondition on the server's state, which depends on timing (did a cancellation come before
    # the start completed?): the rules drawn would then depend on it, and Hypothesis could not replay or shrink
    # a failure. A rule that needs a running server does nothing, or checks the refusal, when it is stopped.

    @rule(
        kind=st.sampled_from(["plain", "RuntimeError", "ValueError", "stream", "websocket"]), chunks=st.integers(1, 3)
    )
    @step
    def request(self, kind: str, chunks: int) -> None:
        if not self.running:
            if kind == "websocket":
                with pytest.raises(ServerStateError, match="is not running"):
                    self.driver.server.websocket_connect("/ws")
            return
        if kind == "plain":
            assert self.driver.get("/") == (200, "hello")
        elif kind == "stream":
            got = self.driver.stream_partly(chunks)
            assert b"0000......" in got, got[:100]
            self.maybe_busy = True
        elif kind == "websocket":
            token = next(self.tokens)
            assert self.driver.websocket_echo(f"hi {token}") == f"echo hi {token}"
            self.maybe_busy = True
        else:
            error = AppError(kind, next(self.tokens))
            status, _ = self.driver.get(boom(kind, error.token))
            assert status == 500
            self.app_errors.append(error)  # `errors` must hold it now: the invariant reads it

    @rule(
        case=st.sampled_from(
            ["required", "optional-raises", "optional-raises-other", "optional-quiet", "missing", "too-many"]
        )
    )
    @step
    def expect_errors(self, case: str) -> None:
        if not self.running:
            return
        token = next(self.tokens)
        path, at_least, at_most = {
            "required": (boom("RuntimeError", token), 1, None),
            "optional-raises": (boom("RuntimeError", token), 0, None),
            "optional-raises-other": (boom("ValueError", token), 0, None),
            "optional-quiet": ("/", 0, None),
            "missing": ("/", 1, None),
            "too-many": (boom("RuntimeError", token), 0, 0),
        }[case]
        outcome = self._attempt(lambda: self.driver.expect(path, at_least, at_most))
        if case in ("missing", "too-many"):
            # Fewer than at_least, or more than at_most: AssertionError. The errors of the type are taken all the
            # same (the docstring: taken at the end of the block, then counted), so stop() does not raise them.
            if not isinstance(outcome.error, AssertionError):
                raise AssertionError(
                    f"expect_errors(RuntimeError, at_least={at_least}, at_most={at_most}) around GET {path} "
                    f"{outcome}, not AssertionError"
                ) from outcome.error
            return
        status, taken = outcome.unwrap()
        if case == "optional-quiet":
            assert (status, taken) == (200, [])
        elif case == "optional-raises-other":  # not of the expected type: it stays, and fails the run as usual
            assert (status, taken) == (500, [])
            self.app_errors.append(AppError("ValueError", token))
        else:
            assert status == 500
            assert [described(e) for e in taken] == [("RuntimeError", f"boom {token}")]

    @precondition(lambda self: self.async_face)
    @rule(cancel=CANCELS)
    @step
    def cancelled_start(self, cancel: Cancel) -> None:
        if self.running:  # a start of a running server is refused at once (the start rule checks): stop it first
            self._check_stop_outcome(self._attempt(lambda: self.driver.stop(DEFAULT)).error, "stop()")
        before = [e.described for e in self.app_errors]
        result = self.driver.cancelled_start(cancel)
        event(f"cancelled start ({cancel.when}): " + _what_happened(result))
        if result.error is not None:
            raise AssertionError(f"a start cancelled by {cancel!r} raised {brief(result.error)}") from result.error
        if result.completed and surely_before(result, apps_properties.STARTUP_DELAY):
            # A start takes at least the app's lifespan startup: this one was cancelled before it could have
            # completed, so the cancellation, not a running server, is what it must end with.
            raise AssertionError(
                f"a start cancelled by {cancel!r} {result.asked_after:.4f}s after it began completed all the same"
            )
        if result.completed:
            self._started()
            return
        if not result.entered:
            return  # cancelled before it began: nothing happened
        assert result.cancelled, f"{result!r}: neither completed nor cancelled"
        # A cancelled start leaves nothing running (whether or not it had completed); it may have cleared errors.
        self._stopped()
        with contextlib.suppress(ServerStateError):
            self._note_where()
        after = [described(e) for e in self.driver.errors()]
        assert after in ([], before), f"after a cancelled start errors are {after}, expected [] or {before}"
        if not after:
            self.app_errors = []

    @precondition(lambda self: self.async_face)
    @rule(cancel=CANCELS, grace=GOOD_GRACE)
    @step
    def cancelled_stop(self, cancel: Cancel, grace: object) -> None:
        was_running = self.running
        result = self.driver.cancelled_stop(cancel, grace)
        event(
            f"cancelled stop ({cancel.when}, running={self.running}, errors={bool(self.app_errors)}): "
            + _what_happened(result)
        )
        if not result.entered:
            return
        what = f"stop({_grace(grace)}) cancelled by {cancel!r}"
        if was_running and not result.cancelled and (surely_before(result, SHUTDOWN_DELAY) or in_shutdown(result)):
            # A stop takes at least the app's lifespan shutdown, which begins after the port closed: this one was
            # cancelled before it could have finished, so the cancellation must be what propagates.
            outcome = "returned" if result.error is None else f"raised {brief(result.error)}"
            raise AssertionError(
                f"{what} {outcome} instead of propagating the cancellation, asked {result.asked_after:.4f}s after "
                f"it began (the {cancel.when} awaited came after {result.changed_after}s)"
            ) from result.error
        if result.cancelled:
            # The stop finished, the cancellation propagated instead of the app's errors, which stay in `errors`
            # (the invariants check), and no later stop raises them.
            self._stopped()
            return
        assert result.completed or result.error is not None, f"{result!r}"
        self._check_stop_outcome(result.error, f"{what} (which completed before the cancellation)")

    # -- what holds after every step --

    @invariant()
    @step
    def promises_hold(self) -> None:
        server = self.driver.server
        assert server.is_running == self.running, f"is_running={server.is_running}, the model says {self.running}"
        assert [described(e) for e in self.driver.errors()] == [e.described for e in self.app_errors], (
            "an app error was lost, or one appeared that the app did not raise"
        )
        if self.port is None:
            return
        assert server.port == self.port
        assert server.base_url == f"http://127.0.0.1:{self.port}"
        assert server.url("x") == server.url("/x") == f"{server.base_url}/x"
        if self.running:
            assert not port_is_free(self.port)
            if self.MODE == "process":
                assert server.pid is not None
                assert server.pid != os.getpid()
                assert alive(server.pid)
            else:
                assert server.pid == os.getpid()
            return
        self._nothing_left()

    def _nothing_left(self) -> None:
        assert self.port is not None
        assert port_is_free(self.port), f"port {self.port} is still bound after the stop"

        def left() -> list[str]:
            return sorted(thread.name for thread in library_threads() - self.base_threads)

        assert within(SETTLE, lambda: not left()), f"threads left behind: {left()}"
        assert within(SETTLE, lambda: fd_count() <= self.base_fds + FD_SLACK), (
            f"{fd_count() - self.base_fds} file descriptor(s) left open (baseline {self.base_fds}):\n"
            + "\n".join(sorted(_fd_targets()))
        )
        assert within(SETTLE, lambda: not any(alive(pid) for pid in self.pids)), f"children left: {self.pids}"
        # Every lifespan startup that completed got its shutdown.
        assert within(SETTLE, lambda: self._lifespan_balance() == 0), (
            f"lifespan events since the machine began: {self.driver.lifespan_events()} - {self.base_lifespan}: "
            "a startup completed without its shutdown"
        )
        on_the_loop = self.driver.left_on_the_loop()
        assert on_the_loop == [], f"left on the test's event loop: {on_the_loop}"

    def teardown(self) -> None:
        try:
            if self.broken:
                if not self.hung:
                    with contextlib.suppress(Exception):  # best effort: the failure is already reported
                        self.driver.stop(DEFAULT)
                return
            outcome = self._attempt(lambda: self.driver.stop(DEFAULT))
            self._check_stop_outcome(outcome.error, "the teardown's stop()")
            assert [described(e) for e in self.driver.errors()] == [e.described for e in self.app_errors]
            if self.port is not None:
                self._nothing_left()
            # What this example left unclosed (a client session, a socket) says so when collected: here, so the
            # failure is this example's (once per example: a full collection takes tens of milliseconds).
            unclosed = collect_garbage()
            assert not unclosed, f"left unclosed: {unclosed}"
        finally:
            self.driver.close(1.0 if self.hung else STEP_DEADLINE)


def event(text: str) -> None:
    """Hypothesis's `event`, also counted for the summary ``UVICORN_TESTSERVER_PROPERTIES_STATS=1`` prints."""
    with contextlib.suppress(InvalidArgument):  # a machine driven by hand, outside a Hypothesis test
        _hypothesis_event(text)
    STATS[text] += 1


def in_shutdown(result: Cancelled) -> bool:
    """Whether a stop's cancellation was asked so soon after its port closed or its lifespan shutdown began that
    the shutdown (`SHUTDOWN_DELAY` at least) was still under way."""
    if result.changed_after is None or result.asked_after is None:
        return False
    return result.asked_after - result.changed_after < 0.8 * SHUTDOWN_DELAY


def surely_before(result: Cancelled, shortest: float) -> bool:
    """Whether the cancellation was asked so early that a call lasting at least `shortest` seconds was still under
    way (with a margin: the time is measured from before the call began)."""
    return result.asked_after is not None and result.asked_after < 0.8 * shortest


def collect_garbage() -> list[str]:
    """Collect garbage now; the `ResourceWarning`s said meanwhile (what was dropped unclosed)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    return [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]


def _what_happened(result: Cancelled) -> str:
    if not result.entered:
        return "never began"
    if result.cancelled or result.completed:
        return ("cancelled" if result.cancelled else "completed") + (" after it" if result.changed_after else "")
    return f"raised {type(result.error).__name__}"


def _fd_targets() -> list[str]:
    targets = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.append(f"{name} -> {os.readlink(f'/proc/self/fd/{name}')}")
    return targets


# -- one machine per face, mode and backend --------------------------------------------------------

CONFIGS = [
    # face, mode, backend, examples, steps (the CI profile's; about 60 s for the file on 2 cores)
    ("sync", "thread", "", 25, 20),
    ("sync", "process", "", 12, 15),
    ("async", "thread", "asyncio", 25, 20),
    ("async", "thread", "trio", 25, 20),
    ("async", "loop", "asyncio", 25, 20),
    ("async", "process", "asyncio", 8, 15),
    ("async", "process", "trio", 8, 15),
]


def machine(face: str, mode: str, backend: str) -> type[LifecycleMachine]:
    name = "".join(part.capitalize() for part in (face, mode, backend)) + "Machine"
    return type(name, (LifecycleMachine,), {"FACE": face, "MODE": mode, "BACKEND": backend})


@pytest.mark.timeout(3600 if LONG else 300)  # one state machine run is one test
@pytest.mark.parametrize(
    ("face", "mode", "backend", "examples", "steps"),
    CONFIGS,
    ids=["-".join(filter(None, config[:3])) for config in CONFIGS],
)
def test_lifecycle_keeps_its_promises(face: str, mode: str, backend: str, examples: int, steps: int) -> None:
    collect_garbage()  # what earlier tests dropped unclosed is not this test's
    STATS.clear()
    started = time.monotonic()
    run_state_machine_as_test(machine(face, mode, backend), settings=profile(examples, steps))
    if os.environ.get("UVICORN_TESTSERVER_PROPERTIES_STATS"):
        lines = [f"{count:5d}  {text}" for text, count in sorted(STATS.items())]
        print(f"\n{face} {mode} {backend}: {time.monotonic() - started:.1f}s", *lines, sep="\n")


# -- what the machine found, swept deterministically ------------------------------------------------

#: Cancellations right at the end of a start: some checkpoints after the app's lifespan startup completed
#: (uvicorn then creates its listener), and deadlines around the lifespan startup's length.
END_OF_START = [Cancel("lifespan", ticks=ticks, native=ticks % 4 == 2) for ticks in range(0, 40, 2)] + [
    Cancel("deadline", delay=round(apps_properties.STARTUP_DELAY + step * 0.0005, 4)) for step in range(-4, 10)
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("mode", "backend"), [("thread", "asyncio"), ("thread", "trio"), ("loop", "asyncio")])
def test_a_start_cancelled_as_it_ends_shuts_the_app_down_and_leaves_the_loop_clean(mode: str, backend: str) -> None:
    """A cancelled start "stops what it started, lifespan shutdown included", and leaves nothing behind.

    Found by the state machine: cancelled just after the app's lifespan startup completed, a start could skip
    the app's lifespan shutdown (thread mode; in loop mode the lifespan task was also left pending on the
    caller's loop), and in loop mode a cancellation inside uvicorn's ``loop.create_server`` left the loop
    watching the closed listening socket, so the next start on the same descriptor never accepted a request.
    """
    collect_garbage()
    driver = AsyncDriver(mode, backend)
    problems: list[str] = []
    try:
        for cancel in END_OF_START:
            before = driver.lifespan_events()
            result = driver.cancelled_start(cancel)
            if driver.live.is_running:  # it completed first: not what this sweep is about
                driver.stop(DEFAULT)
                continue
            assert result.cancelled or not result.entered, f"{cancel!r}: {_what_happened(result)}"

            def balance(before: dict[str, int] = before) -> int:
                events = driver.lifespan_events()
                return (events["startup"] - before["startup"]) - (events["shutdown"] - before["shutdown"])

            # The shutdown begins before the cancelled start returns (it waits for the run to end): no long wait.
            if not within(0.5, lambda: balance() == 0):
                problems.append(f"{cancel!r}: the app's lifespan startup completed, its shutdown never began")
            problems.extend(f"{cancel!r}: left on the loop: {left}" for left in driver.left_on_the_loop())
            if not port_is_free(driver.live.port):
                problems.append(f"{cancel!r}: port {driver.live.port} still bound")
    finally:
        with contextlib.suppress(Exception):
            driver.stop(DEFAULT)
        driver.close(STEP_DEADLINE)
    assert problems == [], "\n".join(problems)

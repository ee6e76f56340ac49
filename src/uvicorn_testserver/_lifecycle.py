"""The one server lifecycle, for every mode.

`ServerCore` owns what a server is between `start()` and `stop()`: the bound socket,
readiness with its deadline, the health check, the app's errors, the captured log,
the stop sequence (ask, wait, force, kill, give up) and the release of everything a
run made. Where uvicorn actually runs is a `Run`, one small class per mode
(`_thread`, `_loop`, `_process`), which only starts serving and answers the core's
questions. The start and stop sequences are written once, as generators of the waits
they need (`Step`); `start()`/`stop()` perform those waits by blocking (the async faces
call them from a worker thread, `_bridge`), and `start_in_loop()`/`stop_in_loop()` by
awaiting on the caller's own loop, where a loop-mode server runs.

`Serving` is the piece the asyncio-based runs share: uvicorn serving a socket as the
main task of an event loop, driven from other threads.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import errno
import http.client
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from uvicorn_testserver._errors import (
    PortInUseError,
    ServerExceptionsError,
    ServerShutdownError,
    ServerStartupError,
    ServerStateError,
    error_is_of,
    expected_count,
    expected_count_problem,
)
from uvicorn_testserver._logs import ServerLog, capture_into, harness_logger, install_capture, log_level_lease
from uvicorn_testserver._settings import ServerSettings, check_seconds, connect_host
from uvicorn_testserver._uvicorn import AppErrorSink, HarnessServer, InFlight, StartupFailed, make_config
from uvicorn_testserver._wsgi import WSGIAdapter, WSGIFactory

if TYPE_CHECKING:
    import ssl as ssl_module

__all__ = [
    "FORCE_GRACE",
    "STOP_MARGIN",
    "Launch",
    "LiveServer",
    "Run",
    "ServerCore",
    "Serving",
    "ServingRun",
    "StartAbandoned",
    "StartupFailed",
    "bind_socket",
    "done_within",
    "errors_noted_on",
]

_T = TypeVar("_T")

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
    """One start() .. stop() in one mode. Its methods are called from other threads than the one it serves
    on, except a loop-mode run's, which the core awaits on that loop (`InLoopRun`).

    `stop_budget` is how long past ``shutdown_timeout`` the run may take to end on its
    own after `ask_stop` (a child process forces its own exit first).
    """

    stop_budget: float

    def launch(self) -> None:
        """Begin serving `Launch.sock`; return at once."""

    def wait_ready(self, timeout: float) -> bool:
        """Wait until ready: True; False when `timeout` passed; raise `StartupFailed` if the start failed."""

    def is_alive(self) -> bool:
        """True while the server may still serve (not ended)."""

    def ask_stop(self, grace: float) -> None:
        """Ask for a stop that gives requests in flight `grace` seconds (or abandon a start in progress).

        Idempotent, any time after creation.
        """

    def wait_ended(self, timeout: float) -> bool:
        """Wait until the run has ended; False when `timeout` passed."""

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

    @property
    def pid(self) -> int | None:
        """The process that serves the app."""

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it ended (process mode), else None."""

    @property
    def output(self) -> str:
        """The child's merged stdout and stderr (process mode), else ''."""


RunFactory = Callable[[Launch], Run]


class InLoopRun(Run, Protocol):
    """A run on the caller's own event loop: its waits are awaited there, never blocking it."""

    async def wait_ready_in_loop(self, timeout: float) -> bool: ...
    async def wait_ended_in_loop(self, timeout: float) -> bool: ...


# The waits of a start or stop. The steps that need them yield them; a driver performs them,
# by blocking (`ServerCore._drive`) or by awaiting on the caller's loop (`ServerCore._drive_in_loop`).


@dataclass(frozen=True)
class WaitReady:
    """Until the run is ready: True, False at `timeout`, or `StartupFailed`."""

    timeout: float


@dataclass(frozen=True)
class WaitEnded:
    """Until the run has ended: True, or False at `timeout`."""

    timeout: float


@dataclass(frozen=True)
class Probe:
    """One health-check GET: (status or None, what happened)."""

    path: str
    deadline: float


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = WaitReady | WaitEnded | Probe | Pause
Steps = Generator[Step, Any, None]


class StartAbandoned(Exception):
    """Internal: a start whose caller gave up on it (a cancelled async start) was ended; the caller raises its
    own cancellation instead."""


class ServerCore:
    """The lifecycle of one server. Thread-safe; `start` and `stop` block and are serialised.

    A run stays tracked until it has really ended: a `stop()` interrupted by Ctrl-C can
    be finished by a later `stop()`, or at interpreter exit.
    """

    def __init__(self, settings: ServerSettings, new_run: RunFactory) -> None:
        self.settings = settings
        self.log = ServerLog()
        self.log.drop_access_log = settings.uvicorn_options.get("access_log") is False
        self.log.level = settings.level
        self.log.propagate = settings.propagate_logs
        self.app_errors: list[BaseException] = []
        self._served_when_raised: dict[int, str] = {}  # id(error) -> "GET /path"
        self._new_run = new_run
        self._lock = threading.Lock()
        self._port = settings.port
        self._sock: socket.socket | None = None  # bound by bind(), not yet handed to a run
        self._run: Run | None = None
        self._cleanup: ExitStack | None = None
        self._running = False  # True between a successful start and the stop that ends it
        self._errors_unraised = False  # a run has ended and its app errors are not raised yet (once per run)
        self.last_run: Run | None = None
        self.on_app_error: AppErrorSink | None = None

    # -- where it listens --

    @property
    def port(self) -> int:
        if self._port == 0:
            raise ServerStateError(
                f"{self.describe()} has no port yet: port=0 picks a free one in start() or bind(); call one first."
            )
        return self._port

    def where(self) -> str:
        """``host:port`` for messages (``?`` for a port not bound yet)."""
        return f"{self.settings.host}:{self._port or '?'}"

    def describe(self) -> str:
        """The server as messages name it; the mode is said when it is not the default, thread."""
        mode, run = self.settings.mode, self.last_run
        pid = f", pid {run.pid}" if mode == "process" and run is not None and run.pid is not None else ""
        return f"uvicorn server for {self.settings.app_name} on {self.where()}" + (
            f" (mode={mode!r}{pid})" if mode != "thread" else ""
        )

    def bind(self) -> int:
        """Bind the listening socket now, if not bound or serving already; return the port."""
        with self._lock:
            if self._sock is None and self._run is None:
                self._sock = self._bind()
            return self._port

    def use_socket(self, sock: socket.socket) -> None:
        """Serve on `sock`, bound and listening already (a process-mode child's inherited socket)."""
        self._sock = sock
        self._port = sock.getsockname()[1]

    def _bind(self) -> socket.socket:
        # Restarting a port=0 server tries its previous port first, so URLs stay valid.
        previous = self._port if self.settings.port == 0 else 0
        sock = bind_socket(self.settings.host, self.settings.port, app_name=self.settings.app_name, previous=previous)
        self._port = sock.getsockname()[1]
        return sock

    # -- state --

    @property
    def is_running(self) -> bool:
        run = self._run
        return self._running and run is not None and run.is_alive()

    @property
    def errors(self) -> list[BaseException]:
        """The app's errors since the last start, complete up to the response a client has just read."""
        self.settle()
        return list(self.app_errors)

    def settle(self) -> None:
        run = self._run
        if run is not None:
            run.settle()

    # -- start and stop: the steps, and the two ways of waiting on them --

    def start(self, cancelled: threading.Event | None = None) -> None:
        """Bind (unless bound), start a run and block until it is ready and healthy.

        Raises `ServerStartupError` (nothing is left running), `ServerStateError` if a run
        exists. `cancelled`, set from another thread (then `abandon` called), makes the
        start give up promptly.
        """
        with self._lock:
            self._drive(self._start_steps(cancelled))

    def stop(self, shutdown_timeout: float | None = None) -> None:
        """Stop the run (if any) and block until it has ended; release everything, then raise the app's
        errors if told to. Idempotent. Interrupted (Ctrl-C), the run stays tracked for a later stop().
        `shutdown_timeout` overrides the server's for this stop."""
        with self._lock:
            self._drive(self._stop_steps(shutdown_timeout))
        self.raise_app_errors()

    async def start_in_loop(self) -> None:
        """`start`, awaiting instead of blocking: for a run on the caller's own event loop (loop mode).

        A cancellation abandons the start and stops what it started before it propagates.
        """
        with self._held():
            await self._drive_in_loop(self._start_steps(None), abandon_on_cancel=True)

    async def stop_in_loop(self, shutdown_timeout: float | None = None) -> None:
        """`stop`, awaiting instead of blocking; a cancellation lets the stop finish, then propagates."""
        with self._held():
            await self._drive_in_loop(self._stop_steps(shutdown_timeout), abandon_on_cancel=False)
        self.raise_app_errors()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        # The event loop must not block on the lock: another thread starting or stopping is a misuse.
        if not self._lock.acquire(blocking=False):
            raise ServerStateError(f"{self.describe()} is being started or stopped from another thread.")
        try:
            yield
        finally:
            self._lock.release()

    def _drive(self, steps: Steps) -> None:
        """Perform each step by blocking; an exception goes back into the steps, which decide."""
        send: Callable[[Any], Step] = steps.send
        value: Any = None
        while True:
            try:
                step = send(value)
            except StopIteration:
                return
            try:
                send, value = steps.send, self._perform(step)
            except BaseException as exc:  # noqa: BLE001 - handed to the steps (a failed wait, Ctrl-C)
                send, value = steps.throw, exc

    async def _drive_in_loop(self, steps: Steps, *, abandon_on_cancel: bool) -> None:
        """Perform each step by awaiting. The first cancellation goes into the steps if `abandon_on_cancel`
        (a start then stops what it started); any other waits for the step, and all are re-raised at the end."""
        send: Callable[[Any], Step] = steps.send
        value: Any = None
        cancelled: BaseException | None = None
        while True:
            try:
                step = send(value)
            except StopIteration:
                break
            while True:
                try:
                    send, value = steps.send, await self._perform_in_loop(step)
                except asyncio.CancelledError as exc:
                    if cancelled is None and abandon_on_cancel:
                        cancelled = exc
                        send, value = steps.throw, exc
                    else:
                        cancelled = cancelled or exc
                        continue  # the same wait again: it has its own bound
                except BaseException as exc:  # noqa: BLE001 - handed to the steps
                    send, value = steps.throw, exc
                break
        if cancelled is not None:
            raise cancelled

    def _perform(self, step: Step) -> Any:
        run = self._run
        if isinstance(step, Probe):
            return self._probe(step.path, step.deadline)
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        assert run is not None
        return run.wait_ready(step.timeout) if isinstance(step, WaitReady) else run.wait_ended(step.timeout)

    async def _perform_in_loop(self, step: Step) -> Any:
        run = self._run
        if isinstance(step, Probe):
            return await asyncio.to_thread(self._probe, step.path, step.deadline)
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
            return None
        in_loop = cast(InLoopRun, run)  # start_in_loop() is only called for runs on the caller's loop
        if isinstance(step, WaitReady):
            return await in_loop.wait_ready_in_loop(step.timeout)
        return await in_loop.wait_ended_in_loop(step.timeout)

    def _start_steps(self, cancelled: threading.Event | None) -> Steps:
        if self._run is not None:
            url = f"{self.settings.scheme}://{connect_host(self.settings.host)}:{self._port}"
            state = f"already running at {url}" if self._running else "still stopping after an interrupted stop()"
            raise ServerStateError(f"{self.describe()} is {state}; call stop() first.")
        started_at = time.monotonic()
        install_capture()
        self.app_errors.clear()
        self._served_when_raised.clear()
        self._errors_unraised = False
        cleanup = ExitStack()
        try:
            sock, self._sock = self._sock or self._bind(), None
            cleanup.callback(sock.close)
            cleanup.enter_context(log_level_lease(self.settings.level))
            run = self._new_run(Launch(self.settings, sock, self._run_options(cleanup), self.log, self.note_app_error))
        except BaseException:
            cleanup.close()
            raise
        self._run, self._cleanup, self.last_run = run, cleanup, run
        _live.add(self)
        try:
            yield from self._bring_up(run, started_at, cancelled)
        except BaseException as error:
            try:
                yield from self._stop_steps()
            except ServerShutdownError as stop_error:  # the start's own error says more; keep both
                error.add_note(f"Stopping it afterwards failed too: {stop_error}")
            self._errors_unraised = False  # the start's error is the report; the app's stay in `errors`
            raise
        self._running = True

    def abandon(self) -> None:
        """From another thread: make a start in progress give up (its `cancelled` event is set first)."""
        run = self._run
        if run is not None and not self._running:
            run.ask_stop(self.settings.shutdown_timeout)

    def in_flight(self) -> list[InFlight]:
        """The requests and WebSockets the app is handling now."""
        run = self._run
        if run is None or not self._running:
            return []
        return run.in_flight()

    def note_app_error(self, exc: BaseException, serving: str) -> None:
        """Record an unhandled exception of the app (`serving`: what it served, "GET /divide")."""
        self._served_when_raised[id(exc)] = serving
        self.app_errors.append(exc)
        if self.on_app_error is not None:
            self.on_app_error(exc, serving)

    def served_when_raised(self, error: BaseException) -> str:
        """What the app was serving when it raised `error` ("GET /divide"), or ''."""
        return self._served_when_raised.get(id(error), "")

    def take_expected(self, since: int, types: tuple[type[BaseException], ...]) -> list[BaseException]:
        """Take the errors after position `since` that are of `types` out of `errors`; return them."""
        self.settle()
        taken = [error for error in self.app_errors[since:] if error_is_of(error, types)]
        for error in taken:
            self.app_errors.remove(error)
        return taken

    def _run_options(self, cleanup: ExitStack) -> dict[str, Any]:
        """uvicorn options for one run; what the run creates (TLS files, WSGI threads) is released by `cleanup`."""
        settings = self.settings
        options = dict(settings.served_options)
        if isinstance(settings.served_app, WSGIAdapter | WSGIFactory):
            cleanup.callback(settings.served_app.close, settings.shutdown_timeout)
        if settings.tls is not None:
            cleanup.callback(settings.tls.remove_files)
            options.update(settings.tls.write_files())
        return options

    def _bring_up(self, run: Run, started_at: float, cancelled: threading.Event | None) -> Steps:
        """Launch `run`, wait until it is ready, then until it is healthy; all within startup_timeout."""
        settings = self.settings
        deadline = started_at + settings.startup_timeout
        try:
            run.launch()
            if cancelled is not None and cancelled.is_set():
                run.ask_stop(settings.shutdown_timeout)
            ready = yield WaitReady(max(0.0, deadline - time.monotonic()))
        except StartupFailed as exc:
            raise self._startup_error(f"failed to start: {exc.reason}", started_at, run, exc.reason) from exc.__cause__
        if not ready:
            raise self._startup_error(
                f"was not ready within startup_timeout={settings.startup_timeout}s: lifespan startup or loading "
                "the app did not finish. Look for a blocking call or an await that never returns in the app's "
                "startup, or raise startup_timeout",
                started_at,
                run,
            )
        if cancelled is not None and cancelled.is_set():
            raise StartAbandoned("the start was abandoned (its caller was cancelled) once the server was ready")
        if settings.health_path is not None:
            yield from self._wait_healthy(run, settings.health_path, deadline, started_at)

    def _wait_healthy(self, run: Run, path: str, deadline: float, started_at: float) -> Steps:
        """Poll GET `path` with a short back-off until it answers 2xx, the run ends, or `deadline` passes."""
        delay = 0.002
        answered = ""  # the last answer, which says more than a last try that timed out
        while True:
            if not run.is_alive():
                raise self._startup_error(f"stopped while waiting for {path} to answer 2xx", started_at, run)
            status, last = yield Probe(path, deadline)
            if status is not None:
                if 200 <= status < 300:
                    return
                answered = last
            else:
                last = f"{answered}; the last try raised {last}" if answered else f"the last try raised {last}"
            if time.monotonic() + delay >= deadline:
                raise self._startup_error(
                    f"health check GET {path} did not answer 2xx within startup_timeout="
                    f"{self.settings.startup_timeout}s ({last}). Check the route and what it depends on, or raise "
                    "startup_timeout",
                    started_at,
                    run,
                )
            yield Pause(delay)
            delay = min(delay * 2, 0.1)

    def _probe(self, path: str, deadline: float) -> tuple[int | None, str]:
        """GET `path` once, over TLS when the server serves HTTPS; the status and what it answered, or the error."""
        host, timeout = connect_host(self.settings.host).strip("[]"), max(0.1, deadline - time.monotonic())
        connection: http.client.HTTPConnection
        if self.settings.scheme == "http":
            connection = http.client.HTTPConnection(host, self._port, timeout=timeout)
        else:
            import ssl

            # A user's own certificate is not verified here: this checks readiness, not trust.
            tls = self.settings.tls
            context = tls.client_context() if tls is not None else ssl._create_unverified_context()
            connection = http.client.HTTPSConnection(host, self._port, timeout=timeout, context=context)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            return response.status, f"it answered {response.status} {response.reason}"
        except (OSError, http.client.HTTPException) as exc:
            return None, repr(exc)
        finally:
            connection.close()

    def _startup_error(self, what: str, started_at: float, run: Run, reason: str = "") -> ServerStartupError:
        elapsed = time.monotonic() - started_at
        error = ServerStartupError(
            f"{self.describe()} {what} (after {elapsed:.3f}s).{run.diagnostics()}",
            host=self.settings.host,
            port=self._port,
            app=self.settings.app_name,
            elapsed=elapsed,
            log_tail=self.log.tail(),
        )
        error.reason = reason or what
        return error

    def _shutdown_error(self, what: str, started_at: float, run: Run) -> ServerShutdownError:
        return ServerShutdownError(
            f"{self.describe()} {what}{run.diagnostics()}",
            host=self.settings.host,
            port=self._port,
            app=self.settings.app_name,
            elapsed=time.monotonic() - started_at,
            log_tail=self.log.tail(),
        )

    def raise_app_errors(self) -> None:
        """After the stop that ended a run: raise its app errors, once (with `raise_server_exceptions`)."""
        unraised, self._errors_unraised = self._errors_unraised, False
        if unraised and self.settings.raise_server_exceptions and self.app_errors:
            raise self.exceptions_error(self.app_errors) from self.app_errors[0]

    def exceptions_error(self, errors: list[BaseException]) -> ServerExceptionsError:
        """`ServerExceptionsError` for `errors`: each named with what it served, each traceback shown once."""
        return ServerExceptionsError(
            errors,
            served=[self.served_when_raised(error) for error in errors],
            url=f"{self.settings.scheme}://{connect_host(self.settings.host)}:{self._port}",
            host=self.settings.host,
            port=self._port,
            app=self.settings.app_name,
            log_tail=self.log.tail(shown=errors),
        )

    def _stop_steps(self, shutdown_timeout: float | None = None) -> Steps:
        """Ask, wait, force, kill, give up; then release. Interrupted before the end, the run stays tracked."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()  # bound by bind() but never started
        run = self._run
        if run is None:
            return
        settings = self.settings
        grace = settings.shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        started_at = time.monotonic()
        self._running = False  # stopping: no longer running, but tracked until it has ended
        run.ask_stop(grace)
        ended = yield WaitEnded(grace + STOP_MARGIN + run.stop_budget)
        if not ended:
            with capture_into(self.log):
                harness_logger.warning("The server did not stop within shutdown_timeout=%ss; forcing its exit.", grace)
            run.force()
            ended = yield WaitEnded(FORCE_GRACE)
            if not ended and run.kill():
                ended = yield WaitEnded(FORCE_GRACE)
        self._run = None
        _live.discard(self)
        self._errors_unraised = True
        cleanup, self._cleanup = self._cleanup, None
        try:
            if not ended:
                raise self._shutdown_error(
                    f"did not stop within {time.monotonic() - started_at:.1f}s (shutdown_timeout={grace}s, then "
                    "a forced exit). Something blocks its event loop: a synchronous sleep or blocking I/O in an "
                    f"async handler or in lifespan shutdown. {run.left_behind()}",
                    started_at,
                    run,
                )
            problem = run.problem()
            if problem is not None:
                sentence, cause = problem
                raise self._shutdown_error(sentence, started_at, run) from cause
        except ServerShutdownError as error:
            if self._errors_unraised and self.settings.raise_server_exceptions and self.app_errors:
                count = len(self.app_errors)
                error.add_note(f"The app also raised {count} unhandled exception(s) while serving: see `errors`.")
            self._errors_unraised = False  # this is the stop's report
            raise
        finally:
            run.release()
            if cleanup is not None:
                cleanup.close()


# Servers still running (or bound) at interpreter exit are stopped, so their threads and children end.
_live: weakref.WeakSet[ServerCore] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for core in list(_live):
        with contextlib.suppress(Exception):  # nothing is left to report to at exit
            core.stop()


def done_within(future: concurrent.futures.Future[Any], timeout: float) -> bool:
    """Wait for `future`: True once it has a result, False after `timeout`; its exception is raised."""
    try:
        future.result(timeout)
    except TimeoutError:
        return False
    return True


def bind_socket(host: str, port: int, *, app_name: str, previous: int = 0) -> socket.socket:
    """Bind and listen on `host`:`port` (0 picks a free port); raise `ServerStartupError` if that fails.

    With ``port=0`` and a `previous` port, that port is tried first and a fresh one
    taken if it is gone.
    """
    ports = [previous, 0] if port == 0 and previous != 0 else [port]
    for candidate in ports:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host or None, candidate, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise ServerStartupError(
                f"cannot resolve host {host!r} for {app_name}: {exc}. Use an IP address such as 127.0.0.1.",
                host=host,
                port=candidate,
                app=app_name,
            ) from exc
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)  # listen at once: clients that connect early queue instead of failing
        except OSError as exc:
            sock.close()
            if candidate != port:
                continue  # the previous port is gone; take a fresh one
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"cannot serve {app_name} on {host}:{candidate}: the port is already in use. "
                    "Pass port=0 to get a free port, or stop whatever listens there.",
                    host=host,
                    port=candidate,
                    app=app_name,
                    elapsed=0.0,
                ) from exc
            raise ServerStartupError(
                f"cannot bind {host}:{candidate} for {app_name}: {exc}.",
                host=host,
                port=candidate,
                app=app_name,
                elapsed=0.0,
            ) from exc
        return sock
    raise AssertionError("unreachable: the last candidate port is the requested one")


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
    thread_id: int | None = None
    cancelled: bool = False

    async def main(self) -> None:
        """The task's body: serve until asked to stop. Reports a start that failed through `ready`."""
        self.loop, self.task, self.thread_id = asyncio.get_running_loop(), asyncio.current_task(), threading.get_ident()
        if self.cancelled:  # the start was abandoned before this loop ran
            self.ready.set_exception(StartupFailed("the start was abandoned before the server's loop ran"))
            return
        with capture_into(self.log):
            await self.server.serve_on(self.sock, self.ready)

    def ask_stop(self, grace: float, sig: int) -> None:
        self.server.ask_stop(grace, sig)
        if not self.server.has_started:
            self.cancel()  # still starting (a startup that hangs): abort it, ending its lifespan cleanly

    def force(self) -> None:
        self.server.force()
        self.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        loop, task = self.loop, self.task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(task.cancel)

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
        if loop is None or self.thread_id == threading.get_ident() or not loop.is_running():
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
    returncode = None
    output = ""
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

    @property
    def pid(self) -> int:
        return os.getpid()


# -- the accessors every face shares ------------------------------------------------------------


class LiveServer:
    """Where a server listens and what it recorded: the accessors `UvicornTestServer` and `AsyncTestServer` share."""

    _core: ServerCore

    @property
    def app(self) -> Any:
        """The app as given (an import string or an app object)."""
        return self._core.settings.app

    @property
    def mode(self) -> str:
        """Where uvicorn runs: ``"thread"``, ``"loop"`` or ``"process"``."""
        return self._core.settings.mode

    @property
    def host(self) -> str:
        """The host the server binds."""
        return self._core.settings.host

    @property
    def health_path(self) -> str | None:
        """The path that must answer 2xx before `start()` returns, or None."""
        return self._core.settings.health_path

    @property
    def startup_timeout(self) -> float:
        """Seconds a start may take before it fails with `ServerStartupError`."""
        return self._core.settings.startup_timeout

    @property
    def shutdown_timeout(self) -> float:
        """Seconds in-flight requests get to finish at `stop()` before they are cut."""
        return self._core.settings.shutdown_timeout

    @property
    def raise_server_exceptions(self) -> bool:
        """Whether `stop()` raises `ServerExceptionsError` for the app's unhandled exceptions."""
        return self._core.settings.raise_server_exceptions

    @property
    def propagate_logs(self) -> bool:
        """Whether the server's records also reach the process's logging (pytest's ``caplog`` included)."""
        return self._core.settings.propagate_logs

    @property
    def log_level(self) -> str:
        """The least severe level of the server's records that are kept and passed on."""
        return self._core.settings.log_level

    @property
    def uvicorn_options(self) -> dict[str, Any]:
        """The extra `uvicorn.Config` options, as given (a copy)."""
        return dict(self._core.settings.uvicorn_options)

    @property
    def port(self) -> int:
        """The port it listens on. Raises `ServerStateError` while it is 0: call `bind()` or `start()` first."""
        return self._core.port

    def bind(self) -> int:
        """Bind the listening socket now and return its port, so URLs can be built before `start()`.

        Race-free: the socket stays bound, and listening, until `stop()`; clients that
        connect before `start()` queue and are served once it has started. Idempotent;
        `start()` binds by itself when this was not called.
        """
        return self._core.bind()

    @property
    def base_url(self) -> str:
        """``http://host:port`` (``https://`` with TLS), for any HTTP client."""
        return f"{self._core.settings.scheme}://{connect_host(self.host)}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS), for WebSocket clients."""
        scheme = "wss" if self._core.settings.scheme == "https" else "ws"
        return f"{scheme}://{connect_host(self.host)}:{self.port}"

    def url(self, path: str = "/") -> str:
        """The absolute HTTP URL of `path` (a leading ``/`` is added if missing)."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    @property
    def ssl_context(self) -> ssl_module.SSLContext:
        """With ``ssl=True``: a client `ssl.SSLContext` that trusts the server's throw-away CA.

        Verification and hostname checks stay on. Available before `start()` and the
        same object across restarts (the CA lives as long as the server object). Raises
        `ServerStateError` without ``ssl=True``.
        """
        tls = self._core.settings.tls
        if tls is None:
            raise ServerStateError(f"{self!r} has no ssl_context: pass ssl=True to serve HTTPS with a throw-away CA.")
        return tls.client_context()

    @property
    def ca_path(self) -> Path:
        """With ``ssl=True``: the CA certificate file (PEM) while the server runs, for ``verify=`` and the like.

        The file is removed by `stop()`. Raises `ServerStateError` without ``ssl=True``
        or when the server is not running.
        """
        tls = self._core.settings.tls
        path = tls.ca_path if tls is not None else None
        if path is None:
            state = "is not running; start() writes the CA file" if tls else "does not use ssl=True"
            raise ServerStateError(f"{self!r} has no ca_path: it {state}.")
        return path

    @property
    def is_running(self) -> bool:
        """True between a successful `start()` and `stop()` while the server serves."""
        return self._core.is_running

    @property
    def errors(self) -> list[BaseException]:
        """Unhandled exceptions the app raised while serving, since the last start.

        Complete up to the response a client has just read: reading it waits (briefly)
        until the server has finished the step it was in. In process mode they are
        `ChildAppError`s, the traceback carried as text.
        """
        return self._core.errors

    @property
    def log(self) -> ServerLog:
        """The log records this server emitted (see `ServerLog`)."""
        return self._core.log

    def in_flight(self) -> list[str]:
        """What the app is handling now, one line each: ``"GET /events (running 2.0s)"``.

        Blocks briefly (see `settle`); empty when the server is not running.
        """
        now = time.monotonic()
        return [request.describe(now) for request in self._core.in_flight()]

    def _until_idle(self, timeout: float) -> Iterator[float]:
        """The pauses of `wait_idle` (the faces sleep them their own way); `TimeoutError` at the deadline."""
        timeout = check_seconds("timeout", timeout)
        deadline = time.monotonic() + timeout
        delay = 0.001
        while busy := self._core.in_flight():
            if time.monotonic() + delay > deadline:
                now = time.monotonic()
                still = "; ".join(request.describe(now) for request in busy)
                raise TimeoutError(f"{self!r} was not idle within {timeout}s: still handling {still}.")
            yield delay
            delay = min(delay * 2, 0.05)

    def served_when_raised(self, error: BaseException) -> str:
        """What the app was serving when it raised `error`, one of `errors` (``"GET /divide"``), or ''."""
        return self._core.served_when_raised(error)

    @contextlib.contextmanager
    def expect_errors(
        self, *types: type[BaseException], at_least: int = 1, at_most: int | None = None
    ) -> Iterator[list[BaseException]]:
        """Expect the app to raise errors of `types` while the block runs; yield the list they end up in.

        At the end of the block the errors of `types` the app raised meanwhile are taken
        out of `errors` (so `stop()` does not raise them) and put in the list. Raises
        `AssertionError` if there were fewer than `at_least` (1 by default; 0 allows the
        errors without requiring them) or more than `at_most` (no limit by default).
        Errors of other types stay, and fail the test as usual. In process mode an error
        matches by its type's name. Blocks briefly at the end (see `settle`).
        """
        expected_count(types, at_least, at_most)
        since = len(self._core.app_errors)
        expected: list[BaseException] = []
        yield expected
        expected.extend(self._core.take_expected(since, types))
        problem = expected_count_problem(types, len(expected), at_least, at_most, "in this block")
        if problem:
            raise AssertionError(f"expected the app of {self!r} to raise {problem}.")

    def settle(self) -> None:
        """Wait (at most 1 s) until the server has finished the step it was in when a client got its answer.

        An app error and its log lines are recorded just after the response is sent;
        after `settle()` they are in `errors` and `log` (reading `errors` settles by
        itself). Blocks; returns at once when the server is not running or when called
        from the server's own event loop.
        """
        self._core.settle()

    @property
    def pid(self) -> int | None:
        """The id of the process serving the app: the test's own in thread and loop mode, the child's in
        process mode (the current or last one; None before the first start)."""
        run = self._core.last_run
        if run is None:
            return None if self.mode == "process" else os.getpid()
        return run.pid

    @property
    def output(self) -> str:
        """Process mode: the child's stdout and stderr since the last start (merged, the last 2000 lines).

        Raises `ServerStateError` in thread and loop mode, where the app writes to the
        test process's own streams (which pytest captures).
        """
        return self._process_run("output").output

    @property
    def returncode(self) -> int | None:
        """Process mode: the exit code of the last child once it has ended (negative: killed by that signal).

        None while it runs or before the first start; raises `ServerStateError` in
        thread and loop mode.
        """
        return self._process_run("returncode").returncode

    def _process_run(self, name: str) -> Run | _NoRun:
        if self.mode != "process":
            raise ServerStateError(
                f"{self!r} has no {name}: the app runs in the test's own process in mode={self.mode!r}."
            )
        return self._core.last_run or _NoRun()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        pid = f" pid={self.pid}" if self.mode == "process" else ""
        where = f"{self._core.settings.app_name} {self._core.where()}{pid}"
        return f"<{type(self).__name__} mode={self.mode} app={where} {state}>"


class _NoRun:
    """What `output` and `returncode` read before the first start."""

    output = ""
    returncode = None


@contextlib.contextmanager
def errors_noted_on(body_error: BaseException | None) -> Iterator[None]:
    """Around the stop that ends a ``with`` block: if the block failed, its failure stays the error,
    and the app's errors (`ServerExceptionsError`) are added to it as a note."""
    if body_error is None:
        yield
        return
    try:
        yield
    except ServerExceptionsError as server_error:
        body_error.add_note(str(server_error))

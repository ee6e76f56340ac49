"""The engine: the one server lifecycle, for every mode.

`ServerCore` owns what a server is between `start()` and `stop()`: the bound socket,
readiness with its deadline, the health check, the app's errors, the captured log,
the stop sequence (ask, wait, force, kill, give up) and the release of everything a
run made. Where uvicorn actually runs is a `Run` (`_core.run`), one small class per
mode in `_runners`, which only starts serving and answers the core's questions. The
start and stop sequences are written once, as generators of the waits they need
(`Step`); `start()`/`stop()` perform those waits by blocking, and the async faces
(`_faces.bridge`) drive `start_steps()`/`stop_steps()` by awaiting on the caller's loop.
"""

from __future__ import annotations

import atexit
import contextlib
import socket
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from uvicorn_testserver._core.app_errors import AppErrorSink, InFlight
from uvicorn_testserver._core.errors import (
    ServerExceptionsError,
    ServerShutdownError,
    ServerStartupError,
    ServerStateError,
)
from uvicorn_testserver._core.health import probe
from uvicorn_testserver._core.logs import ServerLog, capture_into, harness_logger, install_capture, log_level_lease
from uvicorn_testserver._core.run import FORCE_GRACE, STOP_MARGIN, AnyRun, Launch, RunFactory
from uvicorn_testserver._core.settings import ServerSettings, server_url
from uvicorn_testserver._core.sockets import bind_socket
from uvicorn_testserver._core.steps import Pause, Probe, Step, Steps, WaitEnded, WaitReady
from uvicorn_testserver._core.uvicorn_internals import StartupFailed
from uvicorn_testserver._core.wsgi import WSGIAdapter, WSGIFactory

if TYPE_CHECKING:
    from uvicorn_testserver._core.tls import ServerTLS

__all__ = ["ServerCore", "StartAbandoned"]


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
        self.lock = threading.Lock()  # held by a start or stop; the async faces take it without blocking
        self._port = settings.port
        self._sock: socket.socket | None = None  # bound by bind(), not yet handed to a run
        self._run: AnyRun | None = None
        self._cleanup: ExitStack | None = None
        self._running = False  # True between a successful start and the stop that ends it
        self._errors_unraised = False  # a run has ended and its app errors are not raised yet (once per run)
        self.last_run: AnyRun | None = None
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
        named = f", {named}" if run is not None and (named := run.describe()) else ""
        return f"uvicorn server for {self.settings.app_name} on {self.where()}" + (
            f" (mode={mode!r}{named})" if mode != "thread" else ""
        )

    def bind(self) -> int:
        """Bind the listening socket now, if not bound or serving already; return the port."""
        with self.lock:
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

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return self.settings.scheme

    @property
    def client_tls(self) -> ServerTLS | None:
        """With ``ssl=True``: what a client needs to trust the server."""
        return self.settings.tls

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
        with self.lock:
            self._drive(self.start_steps(cancelled))

    def stop(self, shutdown_timeout: float | None = None) -> None:
        """Stop the run (if any) and block until it has ended; release everything, then raise the app's
        errors if told to. Idempotent. Interrupted (Ctrl-C), the run stays tracked for a later stop().
        `shutdown_timeout` overrides the server's for this stop."""
        with self.lock:
            self._drive(self.stop_steps(shutdown_timeout))
        self.raise_app_errors()

    @property
    def current_run(self) -> AnyRun | None:
        """The run between a start and the stop that ends it, whose waits a driver performs."""
        return self._run

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
                send, value = steps.send, self.perform(step)
            except BaseException as exc:  # noqa: BLE001 - handed to the steps (a failed wait, Ctrl-C)
                send, value = steps.throw, exc

    def perform(self, step: Step) -> Any:
        """Perform `step` by blocking (a wait's answer, or a probe's)."""
        run = self._run
        if isinstance(step, Probe):
            return probe(self.settings, self._port, step.path, step.deadline)
        if isinstance(step, Pause):
            time.sleep(step.seconds)
            return None
        assert run is not None
        if run.in_loop:  # blocking on a run of an event loop: only its end, from outside it (interpreter exit)
            if isinstance(step, WaitReady):
                raise ServerStateError(f"{self.describe()} runs on the caller's event loop: start it there.")
            return run.wait_ended_outside(step.timeout)
        return run.wait_ready(step.timeout) if isinstance(step, WaitReady) else run.wait_ended(step.timeout)

    def start_steps(self, cancelled: threading.Event | None = None) -> Steps:
        """The start, as the waits it needs; an exception thrown in (a cancellation) stops what it started, then
        propagates."""
        if self._run is not None:
            url = server_url(self.settings.scheme, self.settings.host, self._port)
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
            run = self._new_run(Launch(self.settings, sock, self._run_options(cleanup), self.log, _weak_sink(self)))
        except BaseException:
            cleanup.close()
            raise
        self._run, self._cleanup, self.last_run = run, cleanup, run
        _live.add(self)
        try:
            yield from self._bring_up(run, started_at, cancelled)
        except BaseException as error:
            try:
                yield from self.stop_steps()
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

    def _bring_up(self, run: AnyRun, started_at: float, cancelled: threading.Event | None) -> Steps:
        """Launch `run`, wait until it is ready, then until it is healthy; all within startup_timeout."""
        settings = self.settings
        deadline = started_at + settings.startup_timeout
        try:
            run.launch()
            if cancelled is not None and cancelled.is_set():
                run.ask_stop(settings.shutdown_timeout)
            ready = yield WaitReady(max(0.0, deadline - time.monotonic()))
        except StartupFailed as exc:
            cause = exc.__cause__
            raise self._startup_error(f"failed to start: {exc.reason}", started_at, run, exc.reason, cause) from cause
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

    def _wait_healthy(self, run: AnyRun, path: str, deadline: float, started_at: float) -> Steps:
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

    def _startup_error(
        self, what: str, started_at: float, run: AnyRun, reason: str = "", cause: BaseException | None = None
    ) -> ServerStartupError:
        """The start's error; `cause`, the app's exception, is chained by the caller, and its traceback printed
        with it, so the log tail does not print it again."""
        elapsed = time.monotonic() - started_at
        error = ServerStartupError(
            f"{self.describe()} {what} (after {elapsed:.3f}s).{run.diagnostics()}",
            host=self.settings.host,
            port=self._port,
            app=self.settings.app_name,
            elapsed=elapsed,
            log_tail=self.log.tail(shown=[cause] if cause is not None else ()),
        )
        error.reason = reason or what
        return error

    def _shutdown_error(self, what: str, started_at: float, run: AnyRun) -> ServerShutdownError:
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
            url=server_url(self.settings.scheme, self.settings.host, self._port),
            host=self.settings.host,
            port=self._port,
            app=self.settings.app_name,
            log_tail=self.log.tail(shown=errors),
        )

    def stop_steps(self, shutdown_timeout: float | None = None) -> Steps:
        """The stop, as the waits it needs: ask, wait, force, kill, give up; then release. Interrupted before the
        end, the run stays tracked. The app's errors are raised after, by `raise_app_errors`."""
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


# Servers still running at interpreter exit are stopped, so their threads and children end. Held strongly:
# a server dropped without stop() still serves in its thread until then.
_live: set[ServerCore] = set()


@atexit.register
def _stop_all() -> None:
    for core in list(_live):
        with contextlib.suppress(Exception):  # nothing is left to report to at exit
            core.stop()


def _weak_sink(core: ServerCore) -> AppErrorSink:
    """`core.note_app_error`, without holding `core`: the core holds its run, so a strong reference from the run
    back would make the whole server (its log, config and sockets) garbage only the cycle collector frees."""
    note_app_error = weakref.WeakMethod(core.note_app_error)

    def sink(exc: BaseException, serving: str) -> None:
        note = note_app_error()
        if note is not None:  # else nobody can read the error any more
            note(exc, serving)

    return sink

"""`LoopRunner`: uvicorn as a task on the caller's running event loop (``mode="loop"``).

It drives the same `HarnessServer` as the thread harness, binds with the same
`bind_socket` and captures logs the same way, so readiness, startup errors, the fast
stop and the no-hang deadlines are those of `UvicornTestServer`; only the place where
uvicorn runs differs. A blocking call in the app blocks the caller's loop too.
"""

from __future__ import annotations

import asyncio
import socket
import time
from contextlib import ExitStack
from dataclasses import dataclass

import aiohttp

from uvicorn_testserver._errors import (
    ServerExceptionsError,
    ServerShutdownError,
    ServerStartupError,
    ServerStateError,
)
from uvicorn_testserver._logs import capture_into, install_capture, log_level_lease
from uvicorn_testserver._server import (
    _FORCE_GRACE,
    _LEVELS,
    _STOP_MARGIN,
    UvicornTestServer,
    bind_socket,
    connect_host,
    describe_app,
    log_forced_exit,
)
from uvicorn_testserver._uvicorn import HarnessServer, StartupFailed, make_config

__all__ = ["LoopRunner"]


@dataclass(eq=False)
class _LoopRun:
    """One start() .. stop() in loop mode: everything that must be released at the end."""

    server: HarnessServer
    sock: socket.socket
    cleanup: ExitStack
    ready: asyncio.Future[None]
    task: asyncio.Task[None] | None = None


class LoopRunner:
    """uvicorn as a task on the caller's running loop, with the thread harness's guarantees.

    `settings` is a `UvicornTestServer` that is never started: it holds the validated
    options, the app and the `ServerLog`. Used by `AsyncTestServer` with ``mode="loop"``.
    """

    def __init__(self, settings: UvicornTestServer, port: int) -> None:
        self._settings = settings  # validated options, the app and the ServerLog
        self._requested_port = port
        self._port = port
        self._errors: list[BaseException] = []
        self._run: _LoopRun | None = None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise ServerStateError(
                f"the server for {describe_app(self._settings.app)} has no port yet: port=0 picks a free one "
                "in start(); call start() first."
            )
        return self._port

    @property
    def is_running(self) -> bool:
        run = self._run
        return run is not None and run.task is not None and not run.task.done() and run.server.started

    @property
    def errors(self) -> list[BaseException]:
        return list(self._errors)

    def _where(self) -> str:
        return f"uvicorn server for {describe_app(self._settings.app)} on {self._settings.host}:{self._port}"

    # -- start --

    async def start(self) -> None:
        if self._run is not None:
            raise ServerStateError(f"the {self._where()} is already running; call stop() first.")
        started_at = time.monotonic()
        run = self._prepare()
        self._run = run
        try:
            await self._wait_ready(run, started_at)
        except BaseException:
            self._run = None
            await self._stop_run(run)
            raise

    def _prepare(self) -> _LoopRun:
        settings = self._settings
        install_capture()
        self._errors.clear()
        previous = self._port if self._requested_port == 0 else 0
        sock = bind_socket(
            settings.host, self._requested_port, app_name=describe_app(settings.app), previous_port=previous
        )
        self._port = sock.getsockname()[1]
        cleanup = ExitStack()
        cleanup.callback(sock.close)
        try:
            cleanup.enter_context(log_level_lease(_LEVELS[settings.log_level]))
            with capture_into(settings.log):  # the task copies this context, and with it the log
                config = make_config(
                    settings.app, shutdown_timeout=settings.shutdown_timeout, options=settings.uvicorn_options
                )
                server = HarnessServer(config, on_app_error=self._errors.append)
                run = _LoopRun(server, sock, cleanup, asyncio.get_running_loop().create_future())
                run.task = asyncio.create_task(
                    run.server.serve_on(run.sock, run.ready), name=f"uvicorn-testserver {settings.host}:{self._port}"
                )
        except BaseException:
            cleanup.close()
            raise
        return run

    async def _wait_ready(self, run: _LoopRun, started_at: float) -> None:
        assert run.task is not None
        settings = self._settings
        deadline = started_at + settings.startup_timeout
        await asyncio.wait(
            {run.ready, run.task}, timeout=max(0.0, deadline - time.monotonic()), return_when="FIRST_COMPLETED"
        )
        if run.ready.done():
            failure = run.ready.exception()
            if isinstance(failure, StartupFailed):
                raise self._startup_error(f"failed to start: {failure.reason}", started_at) from failure.__cause__
        elif run.task.done():
            crash = None if run.task.cancelled() else run.task.exception()
            raise self._startup_error(f"ended before it was ready: {crash!r}", started_at) from crash
        else:
            raise self._startup_error(
                f"was not ready within startup_timeout={settings.startup_timeout}s: lifespan startup or loading "
                "the app did not finish. Look for an await that never returns in the app's startup, or raise "
                "startup_timeout",
                started_at,
            )
        if settings.health_path is not None:
            await self._wait_healthy(run, settings.health_path, started_at, deadline)

    async def _wait_healthy(self, run: _LoopRun, path: str, started_at: float, deadline: float) -> None:
        assert run.task is not None
        url = f"http://{connect_host(self._settings.host)}:{self._port}{path}"
        delay = 0.002
        answered = ""  # the last answer, which says more than a last try that timed out
        async with aiohttp.ClientSession() as session:
            while True:
                if run.task.done():
                    crash = None if run.task.cancelled() else run.task.exception()
                    raise self._startup_error(f"stopped while waiting for {path} to answer 2xx", started_at) from crash
                try:
                    async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                        async with session.get(url) as response:
                            await response.read()
                    if 200 <= response.status < 300:
                        return
                    last = answered = f"it answered {response.status} {response.reason}"
                except (aiohttp.ClientError, OSError) as exc:
                    last = f"{answered}; the last try raised {exc!r}" if answered else f"the last try raised {exc!r}"
                if time.monotonic() + delay >= deadline:
                    raise self._startup_error(
                        f"health check GET {path} did not answer 2xx within startup_timeout="
                        f"{self._settings.startup_timeout}s ({last}). Check the route and what it depends on, "
                        "or raise startup_timeout",
                        started_at,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _startup_error(self, what: str, started_at: float) -> ServerStartupError:
        elapsed = time.monotonic() - started_at
        return ServerStartupError(
            f"{self._where()} (mode='loop') {what} (after {elapsed:.3f}s).",
            host=self._settings.host,
            port=self._port,
            app=describe_app(self._settings.app),
            elapsed=elapsed,
            log_tail=self._settings.log.tail(),
        )

    # -- stop --

    async def stop(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        await self._stop_run(run)
        settings = self._settings
        if settings.raise_server_exceptions and self._errors:
            raise ServerExceptionsError(
                self._errors,
                host=settings.host,
                port=self._port,
                app=describe_app(settings.app),
                log_tail=settings.log.tail(),
            ) from self._errors[0]

    async def _stop_run(self, run: _LoopRun) -> None:
        """Stop `run`'s task and release what it holds; also used after a failed start."""
        task = run.task
        settings = self._settings
        started_at = time.monotonic()
        try:
            if task is None:
                return
            run.server.should_exit = True
            if not run.server.started:
                task.cancel()  # still starting (a startup that hangs): abort it
            try:
                await asyncio.wait({task}, timeout=settings.shutdown_timeout + _STOP_MARGIN)
                if not task.done():
                    log_forced_exit(settings.log, settings.shutdown_timeout)
                    run.server.force_exit = True
                    task.cancel()
                    await asyncio.wait({task}, timeout=_FORCE_GRACE)
            except asyncio.CancelledError:
                task.cancel()
                raise
            if not task.done():
                raise ServerShutdownError(
                    f"the {self._where()} (mode='loop') did not stop within {time.monotonic() - started_at:.1f}s "
                    f"(shutdown_timeout={settings.shutdown_timeout}s, then a forced exit and a cancellation). "
                    "Something in the app ignores cancellation; its task is left behind.",
                    host=settings.host,
                    port=self._port,
                    app=describe_app(settings.app),
                    elapsed=time.monotonic() - started_at,
                    log_tail=settings.log.tail(),
                )
            crash = None if task.cancelled() else task.exception()
            started = run.ready.done() and not run.ready.cancelled() and run.ready.exception() is None
            if crash is not None and started:
                raise ServerShutdownError(
                    f"the {self._where()} (mode='loop') crashed while serving: {crash!r}.",
                    host=settings.host,
                    port=self._port,
                    app=describe_app(settings.app),
                    log_tail=settings.log.tail(),
                ) from crash
        finally:
            if run.ready.done() and not run.ready.cancelled():
                run.ready.exception()  # retrieved: start() already reported it, or never will
            run.cleanup.close()

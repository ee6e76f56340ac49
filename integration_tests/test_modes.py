"""One behaviour, every mode: each feature is tested in thread, loop and process mode alike.

The async face takes all three modes, so the matrix runs through `AsyncTestServer`;
the sync face (`UvicornTestServer`, thread and process) gets the same checks where it
has them. A mode that drifts from the others fails here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests

import apps_modes
from apps import alive, fd_count, port_is_free, server_threads
from uvicorn_testserver import (
    AsyncTestServer,
    ChildAppError,
    ProcessServer,
    ServerExceptionsError,
    ServerStartupError,
    ServerStateError,
    UvicornTestServer,
    create_test_server,
)

MODES = ["thread", "loop", "process"]
SYNC_MODES = ["thread", "process"]
APP = "apps_modes:app"
WAIT = 30  # a deadline for failures only: a passing test never waits it out


def server(mode: str, app: Any = APP, **options: Any) -> AsyncTestServer:
    return AsyncTestServer(app, mode=mode, **options)  # type: ignore[arg-type]


def thread_count() -> int:
    return threading.active_count()


# -- features ------------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_ssl_serves_https_with_https_urls_health_and_a_verifying_context(mode: str) -> None:
    async with server(mode, ssl=True, health_path="/health") as live:
        assert live.base_url.startswith("https://")
        assert live.ws_url.startswith("wss://")
        assert live.ca_path.is_file()
        async with httpx.AsyncClient(verify=live.ssl_context) as client:
            response = await client.get(live.url("/"))
        assert (response.status_code, response.text) == (200, "hello")
        assert await (await live.client.get("/")).text() == "hello"
        async with live.websocket_connect("/ws") as websocket:
            await websocket.send("over tls")
            assert await asyncio.wait_for(websocket.recv(), WAIT) == "echo over tls"
    assert live.errors == []


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_sync_face_serves_https_and_wss(mode: str) -> None:
    with UvicornTestServer(APP, mode=mode, ssl=True, health_path="/health") as live:  # type: ignore[arg-type]
        assert requests.get(live.url("/"), verify=str(live.ca_path), timeout=WAIT).text == "hello"
        with live.websocket_connect("/ws") as websocket:
            websocket.send("sync")
            assert websocket.recv(timeout=WAIT) == "echo sync"


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_a_wsgi_app_is_served_as_wsgi(mode: str) -> None:
    async with server(mode, "apps_modes:wsgi_app", interface="wsgi") as live:
        response = await live.client.get("/where")
        assert (response.status_code, await response.text()) == (200, "wsgi says /where")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["thread", "loop"])
async def test_a_wsgi_app_object_is_detected(mode: str) -> None:
    async with server(mode, apps_modes.wsgi_app) as live:
        response = await live.client.get("/object")
        assert (response.status_code, await response.text()) == (200, "wsgi says /object")


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_errors_are_complete_as_soon_as_the_client_has_its_response(mode: str) -> None:
    async with server(mode, raise_server_exceptions=False) as live:
        for attempt in range(1, 21):
            response = await live.client.get("/divide")
            assert response.status_code == 500
            assert len(live.errors) == attempt, f"attempt {attempt}: {live.errors}"
    error = live.errors[0]
    if mode == "process":
        assert isinstance(error, ChildAppError)
        assert error.type_name == "ZeroDivisionError"
    else:
        assert isinstance(error, ZeroDivisionError)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_the_app_error_is_raised_at_stop_with_its_cause(mode: str) -> None:
    live = await server(mode).start()
    assert (await live.client.get("/divide")).status_code == 500
    with pytest.raises(ServerExceptionsError, match="ZeroDivisionError: division by zero") as info:
        await live.stop()
    assert len(info.value.exceptions) == 1
    assert not live.is_running


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_the_log_captures_app_records_and_access_lines(mode: str) -> None:
    async with server(mode, log_level="info") as live:
        await live.client.get("/log?word=zebra")
        live.settle()
        text = live.log.text
    assert "the app logged zebra" in text
    assert '"GET /log?word=zebra HTTP/1.1" 200' in text
    [record] = [
        record for record in live.log.records if "zebra" in record.getMessage() and record.name == "uvicorn.error"
    ]
    assert record.filename == "apps_modes.py"  # process mode too: the record keeps its file and line
    assert record.lineno > 0


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("propagate", [True, False])
async def test_propagate_logs_false_keeps_the_records_in_server_log_only(
    mode: str, propagate: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with server(mode, log_level="info", propagate_logs=propagate) as live:
        await live.client.get("/log?word=quiet")
        live.settle()
    assert "the app logged quiet" in live.log.text
    assert ("the app logged quiet" in caplog.text) is propagate


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_streaming_and_websockets(mode: str) -> None:
    async with server(mode) as live:
        async with live.client.stream("GET", "/stream") as stream:
            chunks = [chunk async for chunk in stream.iter_lines()]
        assert chunks == ["chunk 0", "chunk 1", "chunk 2"]
        async with live.websocket_connect("/ws") as websocket:
            await websocket.send("hi")
            assert await asyncio.wait_for(websocket.recv(), WAIT) == "echo hi"


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_health_path_that_never_answers_fails_the_start_and_leaves_nothing(mode: str) -> None:
    live = server(mode, health_path="/missing", startup_timeout=2)
    with pytest.raises(ServerStartupError, match=r"health check GET /missing did not answer 2xx .*404 Not Found"):
        await live.start()
    assert not live.is_running
    assert port_is_free(live.port)
    if mode == "process":
        assert live.pid is not None
        assert live.returncode is not None
        assert not alive(live.pid)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_bind_gives_the_port_before_the_start(mode: str) -> None:
    live = server(mode)
    port = live.bind()
    assert live.port == port
    assert not port_is_free(port)
    assert live.url("/") == f"http://127.0.0.1:{port}/"
    async with live:
        assert live.port == port
        assert await (await live.client.get("/")).text() == "hello"
    assert port_is_free(port)


def test_bind_then_stop_without_start_releases_the_port() -> None:
    live = UvicornTestServer(APP)
    port = live.bind()
    assert live.bind() == port  # idempotent
    live.stop()
    assert port_is_free(port)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_cycles_leave_no_threads_fds_or_children(mode: str) -> None:
    async with server(mode):  # warm imports and thread pools
        pass
    threads, fds = thread_count(), fd_count()
    pids = []
    for _ in range(3):
        async with server(mode) as live:
            await live.client.get("/")
            pids.append(live.pid)
    assert fd_count() == fds
    assert thread_count() == threads
    if mode == "process":
        assert len(set(pids)) == 3
        assert not any(alive(pid) for pid in pids if pid is not None)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_expect_errors_takes_the_expected_ones_and_lets_the_others_through(mode: str) -> None:
    live = await server(mode).start()
    with live.expect_errors(ValueError) as expected:
        assert (await live.client.get("/divide?by=nothing")).status_code == 500  # int("nothing")
        assert (await live.client.get("/divide")).status_code == 500  # ZeroDivisionError: not expected
    assert len(expected) == 1
    assert live.served_when_raised(expected[0]) == "GET /divide"
    with pytest.raises(AssertionError, match=r"to raise KeyError in this block; it raised none"):  # noqa: SIM117
        with live.expect_errors(KeyError):
            await live.client.get("/")
    with pytest.raises(ServerExceptionsError, match=r"^[^\n]*ZeroDivisionError: division by zero in GET /divide\n"):
        await live.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_in_flight_names_what_the_app_handles_and_wait_idle_waits_for_it(mode: str) -> None:
    async with server(mode) as live:
        assert live.in_flight() == []
        request = asyncio.create_task(live.client.get("/slow?seconds=0.5"))
        await _until_logged(live, "slow request started")
        [busy] = await asyncio.to_thread(live.in_flight) if mode != "loop" else live.in_flight()
        assert busy.startswith("GET /slow (running ")
        with pytest.raises(TimeoutError, match=r"was not idle within 0\.01s: still handling GET /slow \(running"):
            await live.wait_idle(0.01)
        await live.wait_idle(WAIT)
        assert live.in_flight() == []
        assert (await request).status_code == 200


# -- cancellation ----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_a_start_stops_it_promptly_and_leaves_nothing(mode: str) -> None:
    live = server(mode, "apps_modes:startup_hangs_app", startup_timeout=60)
    task = asyncio.create_task(live.start())
    port = await asyncio.to_thread(_wait_bound, live)
    await asyncio.sleep(0.3)  # well into the start: a child has imported the app, lifespan hangs
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 20  # the cancel abandons the start; the 60 s deadline is not waited out
    assert not live.is_running
    assert port_is_free(port)
    if mode == "process":
        assert live.pid is not None
        assert not alive(live.pid)


def _wait_bound(live: AsyncTestServer) -> int:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            return live.port
        except ServerStateError:
            time.sleep(0.001)
    raise AssertionError("the start never bound its port")


@pytest.mark.asyncio
async def test_cancelling_async_with_uvicorn_test_server_while_it_starts_leaves_nothing_running() -> None:
    live = UvicornTestServer("apps_modes:startup_hangs_app", startup_timeout=60)

    async def use() -> None:
        async with live:
            raise AssertionError("the start hangs: the body is never reached")

    task = asyncio.create_task(use())
    await asyncio.to_thread(lambda: _wait_bound(live))  # type: ignore[arg-type]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not live.is_running
    assert port_is_free(live.port)
    assert not server_threads(live.port)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_a_stop_lets_it_finish_then_propagates(mode: str) -> None:
    live = await server(mode, "apps_modes:slow_shutdown_app").start()
    port = live.port
    task = asyncio.create_task(live.stop())
    await asyncio.sleep(0.1)  # inside lifespan shutdown, which takes 1 s
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not live.is_running
    assert port_is_free(port)


# -- stop ------------------------------------------------------------------------------------------


async def _until_logged(live: AsyncTestServer, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in live.log.text:
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{live.log.text}"
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_the_harness_cut_is_one_warning_not_an_app_error(mode: str) -> None:
    live = await server(mode, shutdown_timeout=0.3, log_level="info").start()
    request = asyncio.create_task(live.client.get("/slow?seconds=60"))
    await _until_logged(live, "slow request started")
    await live.stop()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the client sees its connection dropped, however it says so
        await request
    text = live.log.text
    assert "Cut 1 request(s) still running after the 0.3s graceful shutdown timeout: GET /slow (running" in text
    assert "Exception in ASGI application" not in text
    assert "CancelledError" not in text
    assert '" 500' not in text  # no access line for a response nobody received
    assert live.errors == []


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_clients_connecting_as_the_server_stops_are_answered_refused_or_reset_never_left_hanging(mode: str) -> None:
    """Connections accepted just as the listener closes once hung their clients (and leaked the socket)."""

    def get(url: str) -> str:
        try:
            requests.get(url, timeout=5)
        except requests.exceptions.ConnectionError:
            return "refused or reset"
        except requests.exceptions.Timeout:
            return "hung"
        return "answered"

    outcomes: dict[str, int] = {}
    gc.collect()
    fds = fd_count()
    cycles = 40 if mode == "thread" else 4
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for _ in range(cycles):
            live = UvicornTestServer(APP, mode=mode).start()  # type: ignore[arg-type]
            gets = [pool.submit(get, live.url("/")) for _ in range(3)]
            time.sleep(0.0005)
            live.stop()
            for outcome in gets:
                name = outcome.result()
                outcomes[name] = outcomes.get(name, 0) + 1
            assert fd_count() <= fds, "a connection accepted during the stop was left open"  # no gc.collect()
    assert "hung" not in outcomes, outcomes


def test_an_interrupted_stop_is_tracked_and_a_second_stop_finishes_it() -> None:
    live = UvicornTestServer("apps_modes:slow_shutdown_app").start()
    port = live.port
    main = threading.main_thread().ident
    assert main is not None
    assert threading.get_ident() == main
    timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))  # Ctrl-C during lifespan shutdown
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            live.stop()
    finally:
        timer.join()
    assert not live.is_running
    assert server_threads(port)  # tracked, not forgotten
    with pytest.raises(ServerStateError, match="still stopping after an interrupted stop"):
        live.start()
    live.stop()
    assert port_is_free(port)
    # is_alive(): after a join() interrupted by Ctrl-C, Python 3.11 may keep a thread that ended in enumerate().
    assert not [thread for thread in server_threads(port) if thread.is_alive()]


def test_a_process_start_that_fails_after_the_child_started_leaves_no_child() -> None:
    live = UvicornTestServer(APP, mode="process", health_path="/missing", startup_timeout=3)
    with pytest.raises(ServerStartupError, match="404 Not Found"):
        live.start()
    assert live.pid is not None
    assert not alive(live.pid)
    assert live.returncode is not None


# -- one class, one set of defaults, options checked at construction ---------------------------------


def test_a_subclass_keeps_process_mode() -> None:
    class MyServer(UvicornTestServer):
        pass

    with MyServer(APP, mode="process") as live:
        assert live.pid != os.getpid()
        assert requests.get(live.url("/"), timeout=WAIT).text == "hello"


@pytest.mark.parametrize("face", [UvicornTestServer, ProcessServer, AsyncTestServer, create_test_server])
def test_every_face_shows_every_option_in_its_signature(face: Callable[..., Any]) -> None:
    import inspect

    import uvicorn

    from uvicorn_testserver._core.settings import REJECTED_OPTIONS

    parameters = inspect.signature(face).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    uvicorns = set(inspect.signature(uvicorn.Config.__init__).parameters) - {"self"} - REJECTED_OPTIONS.keys()
    assert {"ssl", "health_path", "startup_timeout", "shutdown_timeout", "env", "cwd", *uvicorns} <= parameters.keys()
    assert parameters["root_path"].default == ""  # uvicorn's own default


def test_the_typed_options_cover_uvicorns() -> None:
    import inspect

    import uvicorn

    from uvicorn_testserver import AsyncServerOptions, ServerOptions, UvicornOptions
    from uvicorn_testserver._core.settings import DEFAULTS, REJECTED_OPTIONS

    uvicorns = set(inspect.signature(uvicorn.Config.__init__).parameters) - {"self"} - REJECTED_OPTIONS.keys()
    assert uvicorns - {"lifespan"} - DEFAULTS.keys() <= UvicornOptions.__annotations__.keys()
    assert DEFAULTS.keys() <= ServerOptions.__annotations__.keys() | {"host", "port"}
    assert DEFAULTS.keys() <= AsyncServerOptions.__annotations__.keys()


@pytest.mark.parametrize("face", [UvicornTestServer, AsyncTestServer])
def test_every_face_has_the_same_defaults(face: Callable[..., Any]) -> None:
    import inspect

    from uvicorn_testserver._core.settings import DEFAULTS

    parameters = inspect.signature(face).parameters
    assert {name: parameters[name].default for name in DEFAULTS} == DEFAULTS


@pytest.mark.parametrize("face", [UvicornTestServer, AsyncTestServer])
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"startup_timeout": -1}, ValueError, r"startup_timeout must be a positive number of seconds, not -1"),
        ({"shutdown_timeout": "5"}, TypeError, r"shutdown_timeout must be a positive number of seconds, not str '5'"),
        ({"shutdown_timeout": float("inf")}, ValueError, r"shutdown_timeout must be a positive number"),
        ({"port": True}, TypeError, r"port must be an integer from 0 to 65535"),
        ({"port": 70000}, ValueError, r"port must be from 0 to 65535"),
        ({"health_path": "health"}, ValueError, r"health_path must start with '/'"),
        ({"raise_server_exceptions": "no"}, TypeError, r"raise_server_exceptions must be True or False"),
        ({"log_level": "loud"}, ValueError, r"log_level must be one of critical, error, warning, info"),
        ({"ssl": "yes"}, TypeError, r"ssl must be True or False"),
        ({"cwd": "/tmp"}, TypeError, r"cwd apply to mode='process' only"),
    ],
)
def test_a_wrong_option_raises_at_construction_naming_it(
    face: Callable[..., Any], options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        face(APP, **options)


def test_loop_mode_is_refused_by_the_sync_face_with_the_way_out() -> None:
    with pytest.raises(ValueError, match=r"mode='loop' runs on your event loop: use AsyncTestServer"):
        UvicornTestServer(APP, mode="loop")  # type: ignore[arg-type]


def test_process_mode_refuses_an_app_object_at_construction() -> None:
    with pytest.raises(TypeError, match="needs an import string"):
        AsyncTestServer(apps_modes.app, mode="process")


# -- under trio as well as asyncio (anyio's pytest plugin) -----------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.mark.anyio
@pytest.mark.parametrize("mode", SYNC_MODES)
async def test_both_faces_serve_under_every_anyio_backend(mode: str, anyio_backend: str) -> None:
    async with UvicornTestServer(APP, mode=mode) as sync_face, httpx.AsyncClient() as client:  # type: ignore[arg-type]
        assert (await client.get(sync_face.url("/"))).text == "hello"
    async with AsyncTestServer(APP, mode=mode) as async_face:  # type: ignore[arg-type]
        async with httpx.AsyncClient() as client:
            response = await client.get(async_face.url("/divide?by=4"))
        assert response.text == "0.25"
    assert not sync_face.is_running
    assert not async_face.is_running


@pytest.mark.anyio
@pytest.mark.parametrize("mode", SYNC_MODES)
async def test_a_cancelled_start_leaves_nothing_under_every_anyio_backend(mode: str, anyio_backend: str) -> None:
    import anyio

    live = AsyncTestServer("apps_modes:startup_hangs_app", mode=mode, startup_timeout=60)  # type: ignore[arg-type]
    with anyio.move_on_after(0.5) as scope:
        await live.start()
    assert scope.cancelled_caught
    assert not live.is_running
    assert port_is_free(live.port)


@pytest.mark.anyio
async def test_under_trio_loop_mode_and_the_aiohttp_client_say_what_to_use_instead(anyio_backend: str) -> None:
    if anyio_backend != "trio":
        pytest.skip("about trio only")
    with pytest.raises(RuntimeError, match=r"mode='loop' runs uvicorn on the test's asyncio event loop, .* under trio"):
        await AsyncTestServer(APP, mode="loop").start()
    async with AsyncTestServer(APP) as live:
        with pytest.raises(
            ServerStateError, match=r"needs asyncio\. Use httpx\.AsyncClient\(base_url=server\.base_url\)"
        ):
            live.client  # noqa: B018 - the property raises

"""The uvicorn internals the harness relies on, checked against the installed release.

A uvicorn release that changes one of them fails here, naming the member, instead of
breaking the harness in some confusing way. The members are listed in the docstring of
``src/uvicorn_testserver/_core/uvicorn_internals.py``; `test_every_listed_member_has_a_check` keeps
that list and these checks in step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import inspect
import logging
import re
import signal
import socket
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
import uvicorn.config
import uvicorn.importer
from websockets.asyncio.client import connect

import apps
from uvicorn_testserver import ServerStartupError, UvicornTestServer
from uvicorn_testserver._core import uvicorn_internals

UVICORN = importlib.metadata.version("uvicorn")
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@dataclass
class Observed:
    """What one real `uvicorn.Server` run showed: started on a socket, one HTTP and one WebSocket connection."""

    server: uvicorn.Server
    connections: list[Any]


def new_config(app: Any = apps.ws_app, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_config=None, log_level=None, timeout_graceful_shutdown=1, **options)


@pytest.fixture(scope="module")
def observed() -> Observed:
    async def run() -> Observed:
        config = new_config(lifespan="on")
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        await server.startup(sockets=[sock])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: contract\r\n\r\n")
            await writer.drain()
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 404")
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                connections = list(server.server_state.connections)
        finally:
            writer.close()
            await writer.wait_closed()
        server.should_exit = True
        await server.shutdown(sockets=[sock])
        return Observed(server, connections)

    return asyncio.run(run())


Check = Callable[[Observed], None]
CHECKS: dict[str, Check] = {}


def check(member: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[member] = fn
        return fn

    return register


def parameters(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


def failing_load(**options: Any) -> uvicorn.Config:
    config = new_config(**options)
    with pytest.raises(Exception):  # noqa: B017, PT011 - any error; the check is which attributes were set
        config.load()
    return config


@check("Server.startup(sockets=)")
def _startup(observed: Observed) -> None:
    assert inspect.iscoroutinefunction(uvicorn.Server.startup)
    assert "sockets" in parameters(uvicorn.Server.startup)


@check("Server.main_loop()")
def _main_loop(observed: Observed) -> None:
    assert inspect.iscoroutinefunction(uvicorn.Server.main_loop)
    assert parameters(uvicorn.Server.main_loop) == ["self"]


@check("Server.on_tick(counter)")
def _on_tick(observed: Observed) -> None:
    assert inspect.iscoroutinefunction(uvicorn.Server.on_tick)
    assert parameters(uvicorn.Server.on_tick) == ["self", "counter"]
    assert asyncio.run(observed.server.on_tick(0)) is True, "on_tick must return True once should_exit is set"


@check("Server.shutdown(sockets=)")
def _shutdown(observed: Observed) -> None:
    assert inspect.iscoroutinefunction(uvicorn.Server.shutdown)
    assert "sockets" in parameters(uvicorn.Server.shutdown)


@check("Server.capture_signals()")
def _capture_signals(observed: Observed) -> None:
    assert callable(uvicorn.Server.capture_signals)
    assert parameters(uvicorn.Server.capture_signals) == ["self"]


@check("Server.started")
def _started(observed: Observed) -> None:
    assert uvicorn.Server(new_config()).started is False
    assert observed.server.started is True


@check("Server.should_exit")
def _should_exit(observed: Observed) -> None:
    assert uvicorn.Server(new_config()).should_exit is False


@check("Server.force_exit")
def _force_exit(observed: Observed) -> None:
    assert uvicorn.Server(new_config()).force_exit is False


@check("Server.handle_exit(sig, frame)")
def _handle_exit(observed: Observed) -> None:
    # (Not its signature: libraries such as sse-starlette wrap it as `(*args, **kwargs)`.)
    server = uvicorn.Server(new_config())
    server.handle_exit(signal.SIGTERM, None)
    assert (server.should_exit, server.force_exit) == (True, False)
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit is True, "a second SIGINT forces the exit"


@check("lifespan.startup_event")
def _lifespan_startup_event(observed: Observed) -> None:
    assert isinstance(observed.server.lifespan.startup_event, asyncio.Event)
    assert observed.server.lifespan.startup_event.is_set()


@check("lifespan.main()")
def _lifespan_main(observed: Observed) -> None:
    assert inspect.iscoroutinefunction(observed.server.lifespan.main)
    assert "main()" in inspect.getsource(type(observed.server.lifespan).startup), "startup creates the main task"


@check("Server.servers")
def _servers(observed: Observed) -> None:
    assert isinstance(observed.server.servers, list)
    assert [type(server) for server in observed.server.servers] == [asyncio.Server]


@check("Server.server_state.connections")
def _connections(observed: Observed) -> None:
    assert isinstance(observed.server.server_state.connections, set)
    assert len(observed.connections) == 2, "an open HTTP and an open WebSocket connection"


@check("Server.server_state.tasks")
def _tasks(observed: Observed) -> None:
    assert isinstance(observed.server.server_state.tasks, set)


@check("Server.lifespan")
def _lifespan(observed: Observed) -> None:
    assert isinstance(observed.server.lifespan, observed.server.config.lifespan_class)


@check("lifespan.should_exit")
def _lifespan_should_exit(observed: Observed) -> None:
    assert observed.server.lifespan.should_exit is False


@check("lifespan.shutdown()")
def _lifespan_shutdown(observed: Observed) -> None:
    assert inspect.iscoroutinefunction(observed.server.lifespan.shutdown)


@check("SystemExit")
def _system_exit(observed: Observed) -> None:
    async def start_failing() -> None:
        config = new_config(apps.lifespan_fails_app)
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[])

    with pytest.raises(SystemExit):
        asyncio.run(start_failing())


@check("Config.load()")
def _load(observed: Observed) -> None:
    assert parameters(uvicorn.Config.load) == ["self"]


@check("Config.loaded")
def _loaded(observed: Observed) -> None:
    assert new_config().loaded is False
    assert observed.server.config.loaded is True


@check("Config.loaded_app")
def _loaded_app(observed: Observed) -> None:
    assert inspect.iscoroutinefunction(type(observed.server.config.loaded_app).__call__)


@check("Config.lifespan_class")
def _lifespan_class(observed: Observed) -> None:
    assert inspect.isclass(observed.server.config.lifespan_class)


@check("Config.get_loop_factory()")
def _get_loop_factory(observed: Observed) -> None:
    factory = new_config(loop="asyncio").get_loop_factory()
    assert factory is not None
    loop = factory()
    assert isinstance(loop, asyncio.AbstractEventLoop)
    loop.close()


@check("uvicorn.config.LOOP_FACTORIES")
def _loop_factories(observed: Observed) -> None:
    assert {"auto", "asyncio"} <= set(uvicorn.config.LOOP_FACTORIES)


@check("Config.http_protocol_class")
def _http_protocol_class(observed: Observed) -> None:
    assert not hasattr(failing_load(http="nonexistent"), "http_protocol_class")
    assert hasattr(observed.server.config, "http_protocol_class")


@check("Config.ssl")
def _ssl(observed: Observed) -> None:
    config = failing_load(ws="nonexistent")
    assert hasattr(config, "http_protocol_class")
    assert hasattr(config, "ssl"), "load() must set ssl before it imports the WebSocket implementation"
    tls_fails = failing_load(ssl_certfile="/nonexistent/cert.pem", ssl_keyfile="/nonexistent/key.pem")
    assert hasattr(tls_fails, "http_protocol_class"), "load() must import the HTTP implementation before TLS (0.53+)"


@check("Config.ws_protocol_class")
def _ws_protocol_class(observed: Observed) -> None:
    assert not hasattr(failing_load(ws="nonexistent"), "ws_protocol_class")
    assert not hasattr(failing_load(ws="nonexistent"), "lifespan_class")


@check("Config(log_config=, log_level=, timeout_graceful_shutdown=)")
def _config_options(observed: Observed) -> None:
    assert {"log_config", "log_level", "timeout_graceful_shutdown"} <= set(parameters(uvicorn.Config.__init__))
    loggers = [logging.getLogger(name) for name in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    before = [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    new_config()
    assert [(list(lg.handlers), lg.level, lg.propagate) for lg in loggers] == before, "log_config=None configured"


@check("uvicorn.importer.import_from_string")
def _import_from_string(observed: Observed) -> None:
    assert uvicorn.importer.import_from_string("os.path:join") is __import__("os").path.join


@check("uvicorn.importer.ImportFromStringError")
def _import_from_string_error(observed: Observed) -> None:
    with pytest.raises(uvicorn.importer.ImportFromStringError):
        uvicorn.importer.import_from_string("no_colon")


@check("connection.shutdown()")
def _connection_shutdown(observed: Observed) -> None:
    for connection in observed.connections:
        assert callable(connection.shutdown), type(connection).__name__


@check("connection.transport")
def _connection_transport(observed: Observed) -> None:
    for connection in observed.connections:
        assert isinstance(connection.transport, asyncio.Transport), type(connection).__name__


@check("connection.access_log")
def _connection_access_log(observed: Observed) -> None:
    http: list[Any] = [c for c in observed.connections if isinstance(c, observed.server.config.http_protocol_class)]
    assert http, "no HTTP connection observed"
    assert all(isinstance(connection.access_log, bool) for connection in http)


@check("AutoZttpProtocol._switch(http2, initial_data)")
def _auto_zttp_switch(observed: Observed) -> None:
    try:
        from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
    except ImportError:  # without zttp: http2=True is refused at construction
        pytest.skip(f"uvicorn {UVICORN} without zttp serves no HTTP/2")
    assert parameters(AutoZttpProtocol._switch) == ["self", "http2", "initial_data"]


@pytest.mark.parametrize("member", sorted(CHECKS))
def test_uvicorn_still_has(member: str, observed: Observed) -> None:
    try:
        CHECKS[member](observed)
    except (AssertionError, AttributeError, TypeError, KeyError) as exc:
        pytest.fail(
            f"uvicorn {UVICORN} changed {member}, which uvicorn-testserver relies on ({exc!r}). "
            "Adapt src/uvicorn_testserver/_core/uvicorn_internals.py, or pin uvicorn below this release in "
            "pyproject.toml."
        )


def test_every_listed_member_has_a_check() -> None:
    assert uvicorn_internals.__doc__ is not None
    listed = set(re.findall(r"``(.+?)``", uvicorn_internals.__doc__.split("What it changes")[0], flags=re.DOTALL))
    listed = {" ".join(member.split()) for member in listed}
    assert listed == set(CHECKS), "the docstring of uvicorn_internals.py and the checks here disagree"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(re.match(r"\d*", part).group() or 0) for part in version.split("."))  # type: ignore[union-attr]


def test_installed_uvicorn_is_inside_the_pinned_range() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    [pin] = [dep for dep in dependencies if re.match(r"uvicorn\b", dep)]
    match = re.fullmatch(r"uvicorn\s*>=\s*([\d.]+)\s*,\s*<\s*([\d.]+)", pin)
    assert match, f"expected a pin like 'uvicorn>=0.53,<0.55', found {pin!r}"
    low, high = match.groups()
    assert version_tuple(low) <= version_tuple(UVICORN) < version_tuple(high), (
        f"uvicorn {UVICORN} is outside the range the harness is tested with ({pin})"
    )


# -- what the harness's uvicorn subclass does with this release: the behaviour, not only the names ---------


def test_behaviour_a_stop_wakes_the_server_at_once_not_on_uvicorns_tick() -> None:
    """`main_loop` wakes when `should_exit` is set; uvicorn itself looks only every 0.1 s."""
    durations = []
    for _ in range(9):
        server = UvicornTestServer(apps.hello_app).start()
        started = time.perf_counter()
        server.stop()
        durations.append(time.perf_counter() - started)
    assert statistics.median(durations) < 0.05, durations  # a generous guard: half of uvicorn's tick


def test_behaviour_a_request_in_flight_is_drained_before_the_stop_returns() -> None:
    flags = apps.Flags()
    server = UvicornTestServer(apps.slow_app(flags, seconds=0.3)).start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        response = pool.submit(requests.get, server.url("/slow"), timeout=30)
        assert flags.entered.wait(30)
        server.stop()
        assert flags.finished.is_set()  # the handler ran to its end before stop() returned
        assert response.result().status_code == 200


def test_behaviour_lifespan_shutdown_runs_at_stop() -> None:
    flags = apps.Flags()
    server = UvicornTestServer(apps.lifespan_app(flags), lifespan="on").start()
    assert flags.started.is_set()
    assert not flags.stopped.is_set()
    server.stop()
    assert flags.stopped.is_set()


def test_behaviour_a_failed_startup_is_an_error_with_the_apps_exception_not_sys_exit() -> None:
    with pytest.raises(ServerStartupError, match=r"lifespan startup raised RuntimeError") as info:
        UvicornTestServer(apps.lifespan_fails_app).start()
    assert isinstance(info.value.__cause__, RuntimeError)

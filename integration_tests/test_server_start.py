"""UvicornTestServer.start(): race-free ports, real readiness, state checks, where it listens."""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator

import pytest
import requests
from websockets.sync.client import connect

from apps import Flags, health_app, hello_app, lifespan_app, ws_app
from uvicorn_testserver import PortInUseError, ServerStartupError, ServerStateError, UvicornTestServer


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """Another program's socket, listening on a port the test then asks the server for."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_port_0_listens_on_a_free_port() -> None:
    with UvicornTestServer(hello_app) as server:
        assert server.port > 0
        assert requests.get(server.url("/"), timeout=30).text == "hello"


def test_twenty_servers_started_at_once_get_distinct_ports() -> None:
    servers = [UvicornTestServer(hello_app) for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        started = list(pool.map(UvicornTestServer.start, servers))
    try:
        assert len({server.port for server in started}) == 20
        for server in started:
            assert requests.get(server.url("/"), timeout=30).text == "hello"
    finally:
        for server in started:
            server.stop()


def test_start_raises_port_in_use_at_once_naming_host_and_port(listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]
    server = UvicornTestServer(hello_app, port=port, startup_timeout=30)
    started_at = time.monotonic()
    with pytest.raises(
        PortInUseError, match=rf"on 127\.0\.0\.1:{port}: the port is already in use\. Pass port=0"
    ) as info:
        server.start()
    assert time.monotonic() - started_at < 5, "a taken port must fail at once, not after startup_timeout"
    assert (info.value.host, info.value.port) == ("127.0.0.1", port)
    assert not server.is_running


def test_start_returns_the_server_for_chaining() -> None:
    server = UvicornTestServer(hello_app)
    try:
        assert server.start() is server
    finally:
        server.stop()


def test_start_twice_raises_server_state_error() -> None:
    with UvicornTestServer(hello_app) as server, pytest.raises(ServerStateError, match=r"already running at http://"):
        server.start()


def test_a_stopped_server_starts_again_on_the_same_port() -> None:
    server = UvicornTestServer(hello_app)
    with server:
        first_port = server.port
        assert requests.get(server.url("/"), timeout=30).text == "hello"  # leaves a TIME_WAIT behind
    assert not server.is_running
    with server:
        assert server.port == first_port
        assert requests.get(server.url("/"), timeout=30).text == "hello"


def test_start_returns_only_after_lifespan_startup_completed() -> None:
    flags = Flags()
    with UvicornTestServer(lifespan_app(flags, startup_delay=0.2)):
        assert flags.started.is_set()


def test_start_waits_until_health_path_answers_2xx() -> None:
    flags = Flags()
    with UvicornTestServer(health_app(flags, failures=3), health_path="/health") as server:
        assert flags.hits == 4  # three 503s, then the 200 start() waited for
        assert requests.get(server.url("/health"), timeout=30).status_code == 200


def test_start_raises_when_health_path_never_answers_2xx() -> None:
    flags = Flags()
    server = UvicornTestServer(health_app(flags, failures=10**9), health_path="/health", startup_timeout=2)
    with pytest.raises(
        ServerStartupError,
        match=r"health check GET /health did not answer 2xx within startup_timeout=2s "
        r"\(it answered 503 Service Unavailable[;)]",
    ) as info:
        server.start()
    assert info.value.elapsed is not None
    # Measured when start() gave up, before it stopped the server; a wall-clock bound on the whole
    # call also counts that stop and the machine's stalls.
    assert info.value.elapsed < 2 + 3, "start() must give up at startup_timeout"
    assert flags.hits > 1
    assert not server.is_running


def test_properties_say_where_the_server_listens() -> None:
    server = UvicornTestServer(ws_app)
    assert server.host == "127.0.0.1"
    assert repr(server).endswith(" 127.0.0.1:? stopped>")
    with server:
        port = server.port
        assert server.is_running
        assert server.base_url == f"http://127.0.0.1:{port}"
        assert server.ws_url == f"ws://127.0.0.1:{port}"
        assert server.url("/a/b?c=1") == f"http://127.0.0.1:{port}/a/b?c=1"
        assert server.url("a") == f"http://127.0.0.1:{port}/a"
        assert server.url() == f"http://127.0.0.1:{port}/"
        with connect(server.ws_url + "/ws") as ws:
            ws.send("ping")
            assert ws.recv(timeout=30) == "ping"
    assert repr(server).endswith(f" 127.0.0.1:{port} stopped>")
    assert server.port == port  # still says where it listened last


def test_ipv6_url_has_brackets() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with UvicornTestServer(hello_app, host="::1") as server:
        assert server.base_url == f"http://[::1]:{server.port}"
        assert requests.get(server.url("/"), timeout=30).text == "hello"


def test_port_before_start_raises_server_state_error() -> None:
    with pytest.raises(ServerStateError, match=r"has no port yet: port=0 picks a free one in start\(\)"):
        _ = UvicornTestServer(hello_app).port


def test_fixed_port_is_known_before_start(listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]
    assert UvicornTestServer(hello_app, port=port).port == port


def test_url_is_a_string_as_well_as_a_builder() -> None:
    # Two real suites swapped onto the library wrote f"{server.url}/path", as their own servers' url was a string.
    with UvicornTestServer(hello_app) as server:
        assert f"{server.url}/" == server.url("/") == server.url("") == server.base_url + "/"
        assert requests.get(f"{server.url}/", timeout=30).text == "hello"
        assert isinstance(server.url, str)
        assert repr(server.url) == repr(server.base_url)  # no internal class in a failing assertion

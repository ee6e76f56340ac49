"""HTTPS and WSS: ssl=True with a throw-away CA, or the user's own certificate files."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
import requests
import trustme
import websockets.asyncio.client
import websockets.sync.client

from apps import hello_app, restored_resources, ws_app
from uvicorn_testserver import AsyncTestServer, ServerStartupError, ServerStateError, UvicornTestServer


@pytest.fixture(scope="module")
def https_server() -> Iterator[UvicornTestServer]:
    with UvicornTestServer(ws_app, ssl=True) as server:
        yield server


@pytest.fixture(scope="module")
def own_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 made by the test itself: (ca, cert, key) files."""
    directory = tmp_path_factory.mktemp("own-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    cert.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    cert.private_key_pem.write_to_path(directory / "key.pem")
    return directory / "ca.pem", directory / "cert.pem", directory / "key.pem"


# -- ssl=True --------------------------------------------------------------------------------


def test_urls_use_https_and_wss(https_server: UvicornTestServer) -> None:
    assert https_server.base_url == f"https://127.0.0.1:{https_server.port}"
    assert https_server.ws_url == f"wss://127.0.0.1:{https_server.port}"


def test_requests_verifies_with_the_ca_file() -> None:
    with UvicornTestServer(hello_app, ssl=True) as server:
        assert server.ca_path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert requests.get(server.url("/"), verify=str(server.ca_path), timeout=30).text == "hello"


def test_httpx_verifies_with_the_ssl_context() -> None:
    with UvicornTestServer(hello_app, ssl=True) as server, httpx.Client(verify=server.ssl_context) as client:
        assert client.get(server.url("/")).text == "hello"


def test_localhost_is_in_the_certificate_too() -> None:
    with UvicornTestServer(hello_app, ssl=True) as server, httpx.Client(verify=server.ssl_context) as client:
        assert client.get(f"https://localhost:{server.port}/").text == "hello"


@pytest.mark.asyncio
async def test_aiohttp_verifies_with_the_ssl_context() -> None:
    async with (
        UvicornTestServer(hello_app, ssl=True) as server,
        aiohttp.ClientSession() as session,
        session.get(server.url("/"), ssl=server.ssl_context) as response,
    ):
        assert await response.text() == "hello"


def test_websocket_connect_uses_wss_with_the_servers_ca(https_server: UvicornTestServer) -> None:
    with https_server.websocket_connect("/ws") as websocket:
        websocket.send("secret")
        assert websocket.recv(timeout=30) == "secret"


def test_the_websockets_client_verifies_with_the_ssl_context(https_server: UvicornTestServer) -> None:
    with websockets.sync.client.connect(https_server.ws_url + "/ws", ssl=https_server.ssl_context) as websocket:
        websocket.send("sync")
        assert websocket.recv(timeout=30) == "sync"


@pytest.mark.asyncio
async def test_the_async_websockets_client_verifies_with_the_ssl_context(https_server: UvicornTestServer) -> None:
    async with websockets.asyncio.client.connect(https_server.ws_url + "/ws", ssl=https_server.ssl_context) as ws:
        await ws.send("async")
        assert await ws.recv() == "async"


def test_health_check_runs_over_tls() -> None:
    with UvicornTestServer(hello_app, ssl=True, health_path="/") as server:
        assert requests.get(server.url("/"), verify=str(server.ca_path), timeout=30).status_code == 200


def test_the_same_ssl_context_verifies_after_a_restart() -> None:
    server = UvicornTestServer(hello_app, ssl=True)
    context = server.ssl_context  # available before start
    with httpx.Client(verify=context) as client:
        for _ in range(2):
            with server:
                assert client.get(server.url("/")).text == "hello"


def test_stop_does_not_wait_for_an_idle_tls_keep_alive_client() -> None:
    server = UvicornTestServer(hello_app, ssl=True, shutdown_timeout=10)
    with httpx.Client(verify=server.ssl_context) as client:
        with server:
            client.get(server.url("/")).raise_for_status()  # the client keeps the connection open
            started_at = time.monotonic()
        elapsed = time.monotonic() - started_at
    # asyncio waits for the idle client's TLS close_notify; the harness must not wait out its 10 s drain.
    assert elapsed < server.shutdown_timeout, f"stop took {elapsed:.2f}s"
    assert "Cut" not in server.log.text


def test_stop_after_the_server_closed_a_tls_connection_the_client_left_open() -> None:
    with restored_resources(), UvicornTestServer(hello_app, ssl=True, shutdown_timeout=10) as server:
        raw = socket.create_connection((server.host, server.port), timeout=30)
        with server.ssl_context.wrap_socket(raw, server_hostname=server.host) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            answer = b""
            while not answer.endswith(b"hello"):
                answer += client.recv(4096)
            # uvicorn has closed its side and waits for a close_notify the client never sends;
            # stop() must neither close that transport a second time nor leave its socket open.
            server.stop()
    assert "Traceback" not in server.log.text


def test_the_ca_file_is_removed_on_stop() -> None:
    with UvicornTestServer(hello_app, ssl=True) as server:
        ca_path = server.ca_path
        assert ca_path.exists()
    assert not ca_path.exists()
    assert not ca_path.parent.exists()
    with pytest.raises(ServerStateError, match=r"has no ca_path: it is not running; start\(\) writes the CA file"):
        _ = server.ca_path


def test_https_in_process_mode() -> None:
    with UvicornTestServer("apps:hello_app", mode="process", ssl=True, health_path="/") as server:
        assert requests.get(server.url("/"), verify=str(server.ca_path), timeout=30).text == "hello"


def session_after_one_request(port: int, context: ssl.SSLContext) -> ssl.SSLSession:
    """The TLS 1.3 session of one request read to its end: its tickets, if any, came before the answer."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.version() == "TLSv1.3"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 200")
        assert answer.endswith(b"hello")
        assert sock.session is not None
        return sock.session


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_ssl_true_sends_no_session_tickets(mode: str) -> None:
    # A sync client reading and writing one SSLSocket from two threads (websockets' while it sends its
    # handshake) can lose its request to the tickets arriving just then.
    with UvicornTestServer("apps:hello_app", mode=mode, ssl=True) as server:  # type: ignore[arg-type]
        assert not session_after_one_request(server.port, server.ssl_context).has_ticket


@pytest.mark.asyncio
async def test_ssl_true_sends_no_session_tickets_in_loop_mode() -> None:
    async with AsyncTestServer(hello_app, mode="loop", ssl=True) as server:
        session = await asyncio.to_thread(session_after_one_request, server.port, server.ssl_context)
        assert not session.has_ticket


# -- verification really happens -------------------------------------------------------------


def test_requests_without_the_ca_fails_verification(https_server: UvicornTestServer) -> None:
    with pytest.raises(requests.exceptions.SSLError, match=r"CERTIFICATE_VERIFY_FAILED"):
        requests.get(https_server.url("/"), timeout=30)


def test_httpx_without_the_ca_fails_verification(https_server: UvicornTestServer) -> None:
    with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED"):
        httpx.get(https_server.url("/"), timeout=30)


def test_websockets_without_the_ca_fails_verification(https_server: UvicornTestServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"CERTIFICATE_VERIFY_FAILED"):
        websockets.sync.client.connect(https_server.ws_url + "/ws", ssl=ssl.create_default_context())


def test_a_plain_http_client_gets_no_answer_from_the_https_server(https_server: UvicornTestServer) -> None:
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(https_server.url("/").replace("https://", "http://"), timeout=30)


# -- the user's own certificate --------------------------------------------------------------


def test_own_certificate_files_serve_https(own_certificate: tuple[Path, Path, Path]) -> None:
    ca, cert, key = own_certificate
    with UvicornTestServer(hello_app, ssl_certfile=str(cert), ssl_keyfile=str(key), health_path="/") as server:
        assert server.base_url.startswith("https://")
        assert requests.get(server.url("/"), verify=str(ca), timeout=30).text == "hello"
        with pytest.raises(ServerStateError, match=r"has no ssl_context: pass ssl=True"):
            _ = server.ssl_context
        # Served as given: the tickets that ssl=True leaves out are the user's choice here.
        assert session_after_one_request(server.port, ssl.create_default_context(cafile=ca)).has_ticket


def test_a_missing_own_key_file_fails_the_start(own_certificate: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, cert, _ = own_certificate
    server = UvicornTestServer(hello_app, ssl_certfile=str(cert), ssl_keyfile=str(tmp_path / "missing.pem"))
    with pytest.raises(ServerStartupError, match=r"cannot set up TLS: FileNotFoundError"):
        server.start()


def test_an_own_context_factory_that_is_no_callable_fails_the_start_in_the_child() -> None:
    # Only ssl=True's own factory is resolved from its import string; a user's string reaches uvicorn as given.
    server = UvicornTestServer("apps:hello_app", mode="process", ssl_context_factory="no_such_module:factory")  # type: ignore[arg-type]
    with pytest.raises(ServerStartupError, match=r"cannot set up TLS: TypeError"):
        server.start()


# -- misuse ----------------------------------------------------------------------------------


def test_ssl_true_with_own_files_is_refused(own_certificate: tuple[Path, Path, Path]) -> None:
    _, cert, key = own_certificate
    with pytest.raises(TypeError, match=r"ssl=True makes its own certificate, so it cannot be combined with ssl_certf"):
        UvicornTestServer(hello_app, ssl=True, ssl_certfile=str(cert), ssl_keyfile=str(key))


def test_ssl_context_without_ssl_true_is_a_state_error() -> None:
    with pytest.raises(ServerStateError, match=r"has no ssl_context: pass ssl=True to serve HTTPS"):
        _ = UvicornTestServer(hello_app).ssl_context


def test_a_missing_trustme_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trustme", None)  # what an environment without the package looks like
    with pytest.raises(
        ImportError,
        match=r"ssl=True needs the trustme package.*pip install trustme \(the extra uvicorn-testserver\[ssl\]\)",
    ):
        UvicornTestServer(hello_app, ssl=True)

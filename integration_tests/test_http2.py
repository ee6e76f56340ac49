"""HTTP/2 servers (``http2=True``): httpx's HTTP/2 client (the ``h2`` package) against real servers in every
mode, over TLS (ALPN ``h2``) and cleartext (h2c with prior knowledge), with HTTP/1.1 and WebSockets on the
same port. uvicorn serves HTTP/2 from 0.53 (the lowest release supported) on, through zttp: without it these
tests skip with the reason; the refusal at construction is tested everywhere.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.metadata
import importlib.util
import socket
import sys
import textwrap
import time
import uuid
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from apps import Baseline, alive
from uvicorn_testserver import AsyncTestServer, ChildAppError, ServerExceptionsError, UvicornTestServer

APP = "apps_http2:app"
MODES = ["thread", "loop", "process"]
TRANSPORTS = ["tls", "h2c"]
WAIT = 30  # a deadline for failures only: a passing test never waits it out
UVICORN = importlib.metadata.version("uvicorn")


def _why_no_http2() -> str | None:
    if importlib.util.find_spec("uvicorn.protocols.http.auto_zttp_impl") is None:
        return f"uvicorn {UVICORN} serves no HTTP/2 (it came in uvicorn 0.53)"
    if importlib.util.find_spec("zttp") is None:
        return "zttp, uvicorn's HTTP/2 protocol, is not installed"
    return None


WHY_NO_HTTP2 = _why_no_http2()
needs_http2 = pytest.mark.skipif(WHY_NO_HTTP2 is not None, reason=f"no HTTP/2 here: {WHY_NO_HTTP2}")


def server(mode: str, transport: str, **options: Any) -> AsyncTestServer:
    return AsyncTestServer(APP, mode=mode, ssl=transport == "tls", http2=True, **options)  # type: ignore[arg-type]


def h2_client(live: AsyncTestServer | UvicornTestServer, **options: Any) -> Any:
    """httpx's HTTP/2 client: ALPN ``h2`` over TLS, prior knowledge (no HTTP/1.1) in cleartext."""
    client_class = httpx.AsyncClient if isinstance(live, AsyncTestServer) else httpx.Client
    if live.base_url.startswith("https://"):
        return client_class(http2=True, verify=live.ssl_context, base_url=live.base_url, timeout=WAIT, **options)
    return client_class(http1=False, http2=True, base_url=live.base_url, timeout=WAIT, **options)


def served(response: httpx.Response) -> tuple[str, int]:
    """The http_version the app saw and the client port of the connection, from ``/who`` or ``/together``."""
    assert response.status_code == 200, response.text
    version, port = response.text.split()
    return version, int(port)


async def until_logged(live: AsyncTestServer, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in live.log.text:
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{live.log.text}"
        await asyncio.sleep(0.005)


# -- serving ---------------------------------------------------------------------------------------
# One server per mode and transport goes through everything, phase by phase (each phase a function named by
# what it shows): a process-mode start costs half a second, and the matrix is six servers.


@needs_http2
@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("mode", MODES)
async def test_an_http2_server_multiplexes_streams_keeps_http1_reports_errors_once_and_cuts_streams_at_stop(
    mode: str, transport: str
) -> None:
    if mode == "process":  # its children are forked from a template that lives as long as the test process
        async with server(mode, transport):
            pass
    baseline = Baseline()
    live = server(mode, transport, health_path="/health", log_level="info", shutdown_timeout=0.1)
    assert live.http2
    await live.start()  # ready once the health check answered, over HTTP/1.1
    try:
        async with h2_client(live) as client:
            port = await multiplexes_100_streams_on_one_connection(client)
            await streams_server_sent_events(client)
            await serves_http1_and_websockets_on_the_same_port(live)
            await wait_idle_waits_for_a_stream(live, client, port)
            await reports_an_app_error_once_and_cuts_an_endless_stream_at_stop(live, client, mode)
    finally:
        await live.stop()
    text = live.log.text
    assert f'127.0.0.1:{port} - "GET /together?group=' in text  # the log capture has the HTTP/2 access lines
    assert '"GET /events HTTP/2" 200' in text
    assert '"GET /health HTTP/1.1" 200' in text
    assert text.count("Exception in ASGI application") == 1
    assert "Cut 1 request(s) still running after the 0.1s graceful shutdown timeout: GET /endless (running" in text
    baseline.assert_restored(wait=WAIT)
    if mode == "process":
        assert live.pid is not None
        assert not alive(live.pid)


async def multiplexes_100_streams_on_one_connection(client: httpx.AsyncClient) -> int:
    """100 requests the app answers only once all 100 are in it at once: one connection, 100 streams."""
    group = uuid.uuid4().hex
    responses = await asyncio.gather(*(client.get(f"/together?group={group}&n=100") for _ in range(100)))
    assert {response.http_version for response in responses} == {"HTTP/2"}
    [(version, port)] = {served(response) for response in responses}  # one connection
    assert version == "2"
    return port


async def streams_server_sent_events(client: httpx.AsyncClient) -> None:
    async with client.stream("GET", "/events") as response:
        assert response.http_version == "HTTP/2"
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in response.aiter_lines() if line]
    assert events == ["data: event 0", "data: event 1", "data: event 2"]


async def serves_http1_and_websockets_on_the_same_port(live: AsyncTestServer) -> None:
    """The async client (aiohttp) speaks HTTP/1.1; WebSockets open over HTTP/1.1. Over TLS both offer HTTP/1.1
    alone, although httpx has set ALPN h2 on the ssl_context it was given."""
    assert (await (await live.client.get("/who")).text()).startswith("1.1 ")
    async with live.websocket_connect("/ws") as websocket:
        await websocket.send("hi")
        assert await asyncio.wait_for(websocket.recv(), WAIT) == "echo hi (1.1)"


async def wait_idle_waits_for_a_stream(live: AsyncTestServer, client: httpx.AsyncClient, port: int) -> None:
    slow = asyncio.create_task(client.get("/slow"))
    await until_logged(live, "slow request started")
    await live.wait_idle(WAIT)
    assert live.in_flight() == []
    assert served(await slow) == ("2", port)  # another stream on the same connection


async def reports_an_app_error_once_and_cuts_an_endless_stream_at_stop(
    live: AsyncTestServer, client: httpx.AsyncClient, mode: str
) -> None:
    failed = await client.get("/divide")
    assert (failed.status_code, failed.http_version) == (500, "HTTP/2")
    assert len(live.errors) == 1
    async with client.stream("GET", "/endless") as endless:
        await until_logged(live, "endless stream started")
        with pytest.raises(ServerExceptionsError, match="ZeroDivisionError: division by zero") as info:
            await live.stop()
        with pytest.raises(httpx.TransportError):  # cut: the stream ends in an error, not in an end
            async for _ in endless.aiter_raw():
                pass
    [error] = info.value.exceptions
    assert isinstance(error, ChildAppError if mode == "process" else ZeroDivisionError)
    assert live.errors == [error]
    await live.stop()  # raised once: a second stop is a no-op


@needs_http2
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_sync_face_serves_http2_to_clients_in_threads(transport: str) -> None:
    with (
        UvicornTestServer(APP, ssl=transport == "tls", http2=True, health_path="/health") as live,
        h2_client(live) as client,
        concurrent.futures.ThreadPoolExecutor(10) as pool,
    ):
        group = uuid.uuid4().hex
        responses = list(pool.map(lambda _: client.get(f"/together?group={group}&n=10"), range(10)))
        assert {response.http_version for response in responses} == {"HTTP/2"}
        assert len({served(response) for response in responses}) == 1
        with live.websocket_connect("/ws") as websocket:
            websocket.send("sync")
            assert websocket.recv(timeout=WAIT) == "echo sync (1.1)"


@needs_http2
def test_an_h2c_upgrade_request_is_answered_over_http1() -> None:
    """zttp does not upgrade a cleartext HTTP/1.1 connection to HTTP/2 (``Upgrade: h2c``): it answers over
    HTTP/1.1 and warns. Cleartext HTTP/2 is prior knowledge only."""
    with UvicornTestServer(APP, http2=True) as live, httpx.Client(base_url=live.base_url, timeout=WAIT) as client:
        upgrade = {"connection": "Upgrade, HTTP2-Settings", "upgrade": "h2c", "http2-settings": "AAMAAABkAAQAAP__"}
        response = client.get("/who", headers=upgrade)
        assert (response.status_code, response.http_version) == (200, "HTTP/1.1")
        assert served(response)[0] == "1.1"
    assert "Unsupported upgrade request." in live.log.text


@needs_http2
def test_a_websocket_opened_over_http2_reaches_the_app_as_http_and_the_log_says_why() -> None:
    """zttp offers RFC 8441 (SETTINGS_ENABLE_CONNECT_PROTOCOL), so browsers open WebSockets over HTTP/2 with an
    extended CONNECT; uvicorn serves WebSockets over HTTP/1.1 only, and hands the app an HTTP CONNECT."""
    with (
        UvicornTestServer(APP, http2=True, log_level="info") as live,
        socket.create_connection((live.host, live.port), timeout=WAIT) as sock,
    ):
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        sock.sendall(connection.data_to_send())
        events = h2_events(sock, connection, until=h2.events.RemoteSettingsChanged)
        assert events[-1].changed_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL].new_value == 1
        authority = f"{live.host}:{live.port}"
        websocket = [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", "/ws")]
        connection.send_headers(1, [*websocket, (":authority", authority), ("sec-websocket-version", "13")])
        sock.sendall(connection.data_to_send())
        events = h2_events(sock, connection, until=h2.events.StreamEnded)
        [response] = [event for event in events if isinstance(event, h2.events.ResponseReceived)]
        assert dict(response.headers)[b":status"] == b"404"  # Starlette's answer to an HTTP request for /ws
    assert '"CONNECT /ws HTTP/2" 404' in live.log.text
    assert live.log.text.count("A client opened a WebSocket over HTTP/2 (CONNECT /ws with :protocol websocket") == 1


def h2_events(sock: socket.socket, connection: h2.connection.H2Connection, *, until: type) -> list[Any]:
    """Read from `sock` until an event of type `until` arrives; every event read, in order."""
    events: list[Any] = []
    while not events or not isinstance(events[-1], until):
        data = sock.recv(65536)
        assert data, f"the server closed the connection before {until.__name__}: {events}"
        for event in connection.receive_data(data):
            events.append(event)
            if isinstance(event, until):
                break
        sock.sendall(connection.data_to_send())
    return events


# -- options ---------------------------------------------------------------------------------------


@needs_http2
def test_the_plugin_serves_http2_from_the_marker_and_from_uvicorn_options(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nuvicorn_app = apps_http2:app\n"
        "uvicorn_options = http2=true\n"
    )
    pytester.makepyfile(  # apps_http2 imports from this run's sys.path, in a child process too
        test_it=textwrap.dedent(
            """
            import httpx
            import pytest

            def version(server):
                with httpx.Client(http1=False, http2=True, base_url=server.base_url) as client:
                    return client.get("/who").text.split()[0]

            def test_ini(uvicorn_server):
                assert uvicorn_server.http2
                assert version(uvicorn_server) == "2"

            @pytest.mark.uvicorn(http2=True)
            def test_marker(fresh_uvicorn_server):
                assert version(fresh_uvicorn_server) == "2"

            @pytest.mark.uvicorn(http2=True, http="h11")
            def test_clash(fresh_uvicorn_server):
                pass
            """
        ),
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*UsageError*http2=True serves HTTP/2 and HTTP/1.1 through uvicorn's zttp*"])


def test_http2_must_be_a_bool_and_cannot_be_served_by_another_http_implementation() -> None:
    with pytest.raises(TypeError, match=r"http2 must be True or False, not str 'yes'"):
        UvicornTestServer(APP, http2="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"http2=True serves HTTP/2 .* cannot be combined with http='h11'"):
        AsyncTestServer(APP, http2=True, http="h11")


def test_http2_without_zttp_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zttp", None)  # as if it were not installed
    with pytest.raises(
        ImportError,
        match=r"^http2=True needs the zttp package, through which uvicorn serves HTTP/2, and it is not installed: "
        r"pip install zttp \(the extra uvicorn-testserver\[http2\]\)\.$",
    ):
        UvicornTestServer(APP, http2=True)


def test_http2_on_a_uvicorn_without_it_names_the_release_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn.protocols.http.auto_zttp_impl", None)  # as before uvicorn 0.53
    with pytest.raises(
        ImportError,
        match=rf"^http2=True needs uvicorn 0\.53 or later, which serves HTTP/2 through zttp, and uvicorn {UVICORN} is "
        r"installed: pip install 'uvicorn<0\.55,>=0\.53' zttp \(the extra uvicorn-testserver\[http2\]\)\.$",
    ):
        AsyncTestServer(APP, http2=True)

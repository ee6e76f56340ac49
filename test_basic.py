"""Quick start: a real uvicorn server for your tests, with the clients you already use.

Run with ``uv run pytest test_basic.py``. Every test below talks to the app over a
real loopback socket, exactly as your production clients will.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import aiohttp
import httpx
import pytest
import requests

from uvicorn_testserver import UvicornTestServer
from uvicorn_testserver.demo import app  # any ASGI app, or an import string like "myproject.main:app"


@pytest.fixture(scope="session")
def server() -> Iterator[UvicornTestServer]:
    """One server for the whole session: started once, stopped at the end."""
    with UvicornTestServer(app) as server:
        yield server


@pytest.fixture
def fresh_server() -> Iterator[UvicornTestServer]:
    """A new server for each test, ready once GET /health answers 2xx."""
    with UvicornTestServer(app, health_path="/health") as server:
        yield server


def test_import_string() -> None:
    with UvicornTestServer("uvicorn_testserver.demo:app") as server:  # or the app object itself
        response = requests.get(server.url("/health"), timeout=5)  # http://127.0.0.1:<free port>/health
    assert response.json() == {"message": "OK"}


def test_requests(server: UvicornTestServer) -> None:
    response = requests.get(server.url("/health"), timeout=5)
    assert response.json() == {"message": "OK"}


def test_httpx(fresh_server: UvicornTestServer) -> None:
    with httpx.Client(base_url=fresh_server.base_url) as client:
        response = client.post("/api/data", json={"hello": "world"})
    assert response.json() == {"received": {"hello": "world"}}


@pytest.mark.asyncio
async def test_aiohttp(server: UvicornTestServer) -> None:
    async with aiohttp.ClientSession(server.base_url) as session, session.get("/test") as response:
        assert response.status == 200
        assert (await response.json())["message"] == "Test endpoint works"


@pytest.mark.skipif(shutil.which("curl") is None and not os.environ.get("CI"), reason="curl is not installed")
def test_curl(server: UvicornTestServer) -> None:
    result = subprocess.run(["curl", "-sS", server.url("/health")], capture_output=True, text=True, timeout=10)
    assert result.stdout == '{"message":"OK"}'


def test_manual_start_and_stop() -> None:
    server = UvicornTestServer(app).start()
    try:
        assert requests.get(server.url("/health"), timeout=5).status_code == 200
    finally:
        server.stop()
    assert not server.is_running


@pytest.mark.asyncio
async def test_async_with() -> None:
    async with UvicornTestServer(app) as server:  # start and stop never block the running loop
        assert server.is_running
        async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url + "/ws/echo") as ws:
            await ws.send_str("hello")
            assert await ws.receive_str() == "hello"

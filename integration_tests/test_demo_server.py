"""demo_server.py as a user runs it: a real child process, real signals, real clients."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "demo_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 20
    lines: list[str] = []
    url = None
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(r"running at (http://127\.0\.0\.1:\d+)", line):
            url = match.group(1)
    if url is None:
        process.kill()
        pytest.fail("demo_server.py never printed its URL:\n" + "".join(lines))
    try:
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        process.stdout.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_demo_server_serves_routes_and_exits_0_on_signal(
    demo: tuple[subprocess.Popen[str], str], signum: signal.Signals
) -> None:
    process, url = demo
    assert requests.get(f"{url}/health", timeout=30).json() == {"message": "OK"}
    assert requests.get(f"{url}/test", timeout=30).status_code == 200
    assert requests.post(f"{url}/api/data", json={"a": 1}, timeout=30).json() == {"received": {"a": 1}}
    assert requests.post(f"{url}/api/data", data="not json", timeout=30).status_code == 422
    with connect(url.replace("http", "ws") + "/ws/echo") as ws:
        ws.send("ping")
        assert ws.recv(timeout=30) == "ping"

    process.send_signal(signum)
    assert process.wait(10) == 0
    assert process.stdout is not None
    assert "Stopped." in process.stdout.read()


def test_demo_server_exits_0_when_ctrl_c_arrives_several_times(demo: tuple[subprocess.Popen[str], str]) -> None:
    # In a terminal, Ctrl-C reaches both `uv run` and the script, and uv forwards it again;
    # a signal handler that sets a threading.Event deadlocked on the second one.
    process, _ = demo
    for _ in range(500):  # spread out, so that some land while the script handles the first
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGINT)
        time.sleep(0.0005)
    assert process.wait(20) == 0
    assert process.stdout is not None
    assert "Stopped." in process.stdout.read()


def test_demo_server_reports_a_taken_port(demo: tuple[subprocess.Popen[str], str]) -> None:
    _, url = demo
    port = url.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, str(ROOT / "demo_server.py"), "--port", port],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert f"127.0.0.1:{port}: the port is already in use. Run with --port 0 for a free port" in result.stderr
    assert "port=0" not in result.stderr  # the command line's flag, not the library's argument


def test_demo_server_suggests_commands_that_work_without_the_dev_group(demo: tuple[subprocess.Popen[str], str]) -> None:
    process, _ = demo
    assert process.stdout is not None
    banner = [process.stdout.readline() for _ in range(8)]  # the rest of the banner (it is printed at once)
    assert "uv run --no-dev python -m websockets ws://127.0.0.1:" in "".join(banner)


def test_demo_server_stops_on_ctrl_c_with_a_stream_open_without_a_traceback(
    demo: tuple[subprocess.Popen[str], str],
) -> None:
    process, url = demo
    with requests.get(f"{url}/events", stream=True, timeout=30) as stream:
        assert next(stream.iter_lines()) == b"id: 0"
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    assert process.stdout is not None
    output = process.stdout.read()
    assert "Traceback" not in output
    assert "Stopped." in output

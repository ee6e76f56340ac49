"""`stop()` ends the server the way a process manager ends uvicorn: through uvicorn's own ``handle_exit``.

In process mode the child gets the real signal (SIGTERM, or SIGINT with
``stop_signal="SIGINT"``) and uvicorn's handler handles it, so an app that learns of the
shutdown there (sse-starlette ends its streams) behaves as in production.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sse_starlette.sse import AppStatus

import apps_contract
from uvicorn_testserver import UvicornTestServer

MODES = ["thread", "process"]


@pytest.fixture(autouse=True)
def _sse_starlette_reset() -> Iterator[None]:
    """sse-starlette keeps its shutdown flag for the whole process (a production process exits after it);
    its own test suite resets it between tests, and so must a suite that stops several servers in one process."""
    AppStatus.should_exit = False
    yield
    AppStatus.should_exit = False


def new_server(mode: str, tmp_path: Path, **options: Any) -> UvicornTestServer:
    apps_contract.events.clear()
    env = {"LIFESPAN_RECORD": str(tmp_path / "events")} if mode == "process" else None
    return UvicornTestServer("apps_contract:app", mode=mode, env=env, **options)  # type: ignore[arg-type]


def shutdown_event(mode: str, tmp_path: Path) -> str:
    events = (tmp_path / "events").read_text().splitlines() if mode == "process" else apps_contract.events
    return events[-1]


@pytest.mark.parametrize("mode", MODES)
def test_an_sse_starlette_stream_ends_at_stop_as_under_sigterm(mode: str, tmp_path: Path) -> None:
    server = new_server(mode, tmp_path, log_level="info").start()
    ended = threading.Event()
    received: list[str] = []

    def listen() -> None:
        with httpx.stream("GET", server.url("/sse"), timeout=30) as response:
            for line in response.iter_lines():
                received.append(line)
        ended.set()

    reader = threading.Thread(target=listen, daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("data: tick") for line in received) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert received, "the stream never started"
    started = time.monotonic()
    server.stop()  # the default shutdown_timeout, 5 s: the stream must end long before it cuts
    took = time.monotonic() - started
    assert ended.wait(5)
    reader.join(5)
    assert took < 1.5, f"the stop took {took:.2f}s: the stream ran until shutdown_timeout cut it"
    assert "Cut" not in server.log.text, "the stream was cut, not ended by the app"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stop_signal", ["SIGTERM", "SIGINT", signal.SIGINT])
def test_the_stop_goes_through_uvicorns_handle_exit_with_the_stop_signal(
    mode: str, stop_signal: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = stop_signal if isinstance(stop_signal, str) else stop_signal.name
    seen: list[int] = []
    if mode == "thread":
        handle_exit = uvicorn.Server.handle_exit

        def recorded(self: uvicorn.Server, sig: int, frame: Any) -> None:  # what sse-starlette does, and others
            seen.append(sig)
            handle_exit(self, sig, frame)

        monkeypatch.setattr(uvicorn.Server, "handle_exit", recorded)
    with new_server(mode, tmp_path, stop_signal=stop_signal) as server:
        assert httpx.get(server.url("/")).text == "hello"
    if mode == "thread":
        assert [signal.Signals(sig).name for sig in seen] == [name]
    else:
        # The app's lifespan shutdown found uvicorn's handler installed for the signal, as under a process manager.
        assert shutdown_event(mode, tmp_path) == f"shutdown signals=['{name}']"
        assert server.returncode == 0


def test_a_wrong_stop_signal_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match=r"stop_signal must be one of SIGTERM, SIGINT, not 'SIGKILL'"):
        UvicornTestServer(apps_contract.app, stop_signal="SIGKILL")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"stop_signal must be one of SIGTERM, SIGINT, not 'SIGHUP'"):
        UvicornTestServer(apps_contract.app, stop_signal=signal.SIGHUP)


@pytest.mark.parametrize("mode", MODES)
def test_a_request_in_flight_finishes_before_lifespan_teardown_runs(mode: str, tmp_path: Path) -> None:
    server = new_server(mode, tmp_path).start()
    answers: list[str] = []
    requester = threading.Thread(target=lambda: answers.append(httpx.get(server.url("/slow"), timeout=30).text))
    requester.start()
    deadline = time.monotonic() + 30
    while not server.in_flight() and time.monotonic() < deadline:
        time.sleep(0.002)
    server.stop()
    requester.join(30)
    assert answers == ["slept"]
    events = (tmp_path / "events").read_text().splitlines() if mode == "process" else apps_contract.events
    assert events[-2:] == ["slow request done", shutdown_event(mode, tmp_path)]

"""Errors the app raises while serving reach the test, after the server has fully stopped."""

from __future__ import annotations

import asyncio
import threading

import pytest
import requests
from fastapi import FastAPI, HTTPException

from apps import Flags, hello_app, lifespan_app, server_threads, shutdown_fails_app
from uvicorn_testserver import ServerExceptionsError, UvicornTestServer


def test_app_error_is_kept_and_raised_by_stop_after_the_server_stopped() -> None:
    server = UvicornTestServer(hello_app).start()
    try:
        response = requests.get(server.url("/fail"), timeout=30)
        assert response.status_code == 500
        [error] = server.errors
        assert isinstance(error, ValueError)
        assert error.__traceback__ is not None
    finally:
        with pytest.raises(
            ServerExceptionsError,
            match=r"^ValueError: the handler broke on purpose in GET /fail\n"
            r"the app .* raised 1 unhandled exception while serving on http://127\.0\.0\.1:\d+; "
            r"its traceback is above \(the cause of this error\)\.\n"
            r"Fix the app, or if the test provokes it on purpose: server\.expect_errors\(ValueError\)\.\n",
        ) as info:
            server.stop()
    assert not server.is_running
    assert server_threads(server.port) == []
    assert info.value.__cause__ is error  # its traceback, printed once, above the error
    assert "Traceback" not in str(info.value)  # and not a second time in the message or the log tail
    assert info.value.exceptions == [error]
    assert (info.value.host, info.value.port) == ("127.0.0.1", server.port)


def test_raise_server_exceptions_false_keeps_the_errors_without_raising() -> None:
    with UvicornTestServer(hello_app, raise_server_exceptions=False) as server:
        assert requests.get(server.url("/fail"), timeout=30).status_code == 500
        assert requests.get(server.url("/fail"), timeout=30).status_code == 500
    assert [type(error) for error in server.errors] == [ValueError, ValueError]


def test_errors_are_cleared_by_the_next_start() -> None:
    server = UvicornTestServer(hello_app, raise_server_exceptions=False)
    with server:
        requests.get(server.url("/fail"), timeout=30)
    assert len(server.errors) == 1
    with server:
        assert server.errors == []


def test_an_error_in_lifespan_shutdown_is_raised_by_stop() -> None:
    server = UvicornTestServer(shutdown_fails_app).start()
    with pytest.raises(ServerExceptionsError, match=r"RuntimeError: could not flush the queue") as info:
        server.stop()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert server_threads(server.port) == []


def test_an_http_exception_with_status_500_is_not_an_error() -> None:
    app = FastAPI()

    @app.get("/unavailable")
    async def unavailable() -> None:
        raise HTTPException(status_code=500, detail="the upstream said no")

    with UvicornTestServer(app) as server:
        response = requests.get(server.url("/unavailable"), timeout=30)
        assert response.status_code == 500
        assert response.json() == {"detail": "the upstream said no"}
    assert server.errors == []


def test_with_block_keeps_the_body_error_and_adds_the_server_errors_as_a_note() -> None:
    def failing_test() -> None:
        with UvicornTestServer(hello_app) as server:
            requests.get(server.url("/fail"), timeout=30)
            raise AssertionError("the test's own failure")

    with pytest.raises(AssertionError, match="the test's own failure") as info:
        failing_test()
    notes = "\n".join(info.value.__notes__)
    assert "raised 1 unhandled exception" in notes
    assert "ValueError: the handler broke on purpose" in notes


def test_with_block_raises_the_server_errors_when_the_body_passed() -> None:
    def passing_test() -> None:
        with UvicornTestServer(hello_app) as server:
            assert requests.get(server.url("/fail"), timeout=30).status_code == 500

    with pytest.raises(ServerExceptionsError, match="ValueError: the handler broke on purpose"):
        passing_test()


@pytest.mark.asyncio
async def test_async_with_never_blocks_the_event_loop() -> None:
    # Lifespan startup and shutdown each wait for a gate that only this loop can open:
    # if `async with` blocked the loop while starting or stopping, they would time out.
    flags = Flags()
    startup_gate, shutdown_gate = threading.Event(), threading.Event()

    async def open_gate(gate: threading.Event) -> None:
        await asyncio.sleep(0.01)  # runs only if the loop is free while start() or stop() is in progress
        gate.set()

    opener = asyncio.create_task(open_gate(startup_gate))
    async with UvicornTestServer(
        lifespan_app(flags, startup_gate=startup_gate, shutdown_gate=shutdown_gate), startup_timeout=20
    ) as server:
        await opener
        assert flags.started.is_set()
        assert server.is_running
        opener = asyncio.create_task(open_gate(shutdown_gate))
    await opener
    assert flags.stopped.is_set()
    assert not server.is_running


@pytest.mark.asyncio
async def test_async_with_raises_server_errors_on_exit() -> None:
    async def passing_test() -> None:
        async with UvicornTestServer(hello_app) as server:
            response = await asyncio.to_thread(requests.get, server.url("/fail"), timeout=30)
            assert response.status_code == 500

    with pytest.raises(ServerExceptionsError, match="ValueError: the handler broke on purpose"):
        await passing_test()

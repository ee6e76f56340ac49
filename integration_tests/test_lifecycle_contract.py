"""The lifecycle's promises that examples once missed, pinned in every mode and face.

Each error reported once; every per-call timeout checked like the options at
construction; an import string that names no application fails the start; the
connection after an app error's 500 stays usable; expected errors that may happen.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

import apps_contract
from uvicorn_testserver import (
    AsyncTestServer,
    ServerExceptionsError,
    ServerStartupError,
    UvicornTestServer,
)

APP = "apps_contract:app"
SYNC_MODES = ["thread", "process"]
MODES = ["thread", "loop", "process"]
BAD_SECONDS: list[tuple[Any, type[Exception]]] = [
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-1, ValueError),
    ("1", TypeError),
    (True, TypeError),
    (None, TypeError),
]


# -- each error reported once ----------------------------------------------------------------


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_the_stop_that_ends_a_run_raises_its_errors_once_and_errors_keeps_them(mode: str) -> None:
    with UvicornTestServer(APP, mode=mode) as server:  # type: ignore[arg-type]
        assert requests.get(server.url("/boom"), timeout=30).status_code == 500
        with pytest.raises(ServerExceptionsError, match="RuntimeError: the handler broke on purpose"):
            server.stop()
    # The block's exit stopped nothing more and raised nothing: the error was reported once.
    server.stop()
    assert [type(error).__name__ for error in server.errors] == [
        "ChildAppError" if mode == "process" else "RuntimeError"
    ]
    server.start()
    assert server.errors == []  # until the next start
    server.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_an_async_stop_raises_the_runs_errors_once(mode: str) -> None:
    async with AsyncTestServer(APP, mode=mode) as server:  # type: ignore[arg-type]
        assert (await server.client.get("/boom")).status_code == 500
        with pytest.raises(ServerExceptionsError):
            await server.stop()
    await server.stop()
    assert len(server.errors) == 1


# -- per-call timeouts -----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "error"), BAD_SECONDS)
def test_a_bad_per_call_timeout_is_refused_before_anything_changes(value: Any, error: type[Exception]) -> None:
    with UvicornTestServer(APP) as server:
        name = "timeout" if value is not None else "shutdown_timeout"
        if value is not None:
            with pytest.raises(error, match=r"timeout must be a number of seconds \(0 or more\)"):
                server.wait_idle(value)
        if value is not None or error is TypeError:
            with pytest.raises(error, match=r"shutdown_timeout must be a number of seconds \(0 or more\)"):
                server.stop(shutdown_timeout=value if value is not None else "5")  # type: ignore[arg-type]
        assert server.is_running, name
        assert requests.get(server.url("/"), timeout=30).text == "hello"
    assert not server.is_running


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_the_async_face_checks_per_call_timeouts_too(mode: str) -> None:
    async with AsyncTestServer(APP, mode=mode) as server:  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"timeout must be a number of seconds"):
            await server.wait_idle(math.nan)
        with pytest.raises(TypeError, match=r"shutdown_timeout must be a number of seconds"):
            await server.stop(shutdown_timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"shutdown_timeout must be a number of seconds"):
            await server.stop(shutdown_timeout=-1)
        assert server.is_running
        assert (await server.client.get("/")).status_code == 200
        await server.stop(shutdown_timeout=0)  # 0 is allowed: cut whatever is in flight at once
    assert not server.is_running


# -- the app an import string names ------------------------------------------------------------


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_an_import_string_naming_no_application_fails_the_start(mode: str) -> None:
    server = UvicornTestServer("apps_contract:not_an_app", mode=mode)  # type: ignore[arg-type]
    with pytest.raises(ServerStartupError, match=r"the app 'apps_contract:not_an_app' names int 42, not an ASGI"):
        server.start()
    assert not server.is_running


# -- the connection after an app error -----------------------------------------------------------


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_a_keep_alive_connection_stays_usable_after_an_app_errors_500(mode: str) -> None:
    # The report: 99-100 of 200 follow-up requests on one requests.Session failed with ConnectionError.
    with UvicornTestServer(APP, mode=mode, raise_server_exceptions=False) as server:  # type: ignore[arg-type]
        with requests.Session() as session:
            for _ in range(100):
                assert session.get(server.url("/boom"), timeout=30).status_code == 500
                assert session.get(server.url("/"), timeout=30).text == "hello"
        with httpx.Client(base_url=server.base_url) as client:
            for _ in range(100):
                assert client.get("/boom").status_code == 500
                assert client.get("/").text == "hello"
        assert len(server.errors) == 200
        log = server.log.text
    assert log.count("Exception in ASGI application") == 200  # logged as uvicorn logs it, once each


# -- expected errors that may happen -------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_expect_errors_at_least_0_allows_an_error_without_requiring_it(mode: str) -> None:
    async with AsyncTestServer(APP, mode=mode) as server:  # type: ignore[arg-type]
        for raises in ("0", "1", "1"):
            with server.expect_errors(RuntimeError, at_least=0) as expected:
                await server.client.get("/boom", params={"raise": raises})
            assert len(expected) == int(raises)
        with server.expect_errors(RuntimeError, at_least=2, at_most=2) as expected:
            await server.client.get("/boom")
            await server.client.get("/boom")
        assert len(expected) == 2
        too_many = r"to raise RuntimeError at most 1 time in this block; it raised 2"
        with pytest.raises(AssertionError, match=too_many), server.expect_errors(RuntimeError, at_most=1):  # noqa: PT012
            await server.client.get("/boom")
            await server.client.get("/boom")
        too_few = r"to raise RuntimeError at least 2 times in this block; it raised 1"
        with pytest.raises(AssertionError, match=too_few), server.expect_errors(RuntimeError, at_least=2):
            await server.client.get("/boom")
        assert server.errors == []  # every expected one was taken, in the failing blocks too


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"at_least": -1}, ValueError, r"at_least=...\) takes 0 or more errors, not -1"),
        ({"at_least": 1.5}, TypeError, r"at_least=...\) takes a whole number of errors, not 1.5"),
        ({"at_least": 2, "at_most": 1}, ValueError, r"at_most=1 below at_least=2"),
    ],
)
def test_expect_errors_checks_its_counts_before_the_block(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    server = UvicornTestServer(APP)
    with pytest.raises(error, match=match), server.expect_errors(RuntimeError, **kwargs):
        pytest.fail("the block must not run")


def test_the_marker_allows_an_error_that_may_happen(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nuvicorn_app = apps_contract:app\nuvicorn_server_scope = function\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(apps_contract=Path(apps_contract.__file__).read_text())
    pytester.makepyfile(
        test_a="""
        import pytest, requests

        @pytest.mark.uvicorn(expect_errors=RuntimeError, expect_errors_at_least=0)
        @pytest.mark.parametrize("raises", ["0", "1"])
        def test_may_raise(uvicorn_server, raises):
            requests.get(uvicorn_server.url("/boom"), params={"raise": raises}, timeout=30)

        @pytest.mark.uvicorn(expect_errors=RuntimeError, expect_errors_at_most=1)
        def test_raises_too_often(uvicorn_server):
            requests.get(uvicorn_server.url("/boom"), timeout=30)
            requests.get(uvicorn_server.url("/boom"), timeout=30)

        @pytest.mark.uvicorn(expect_errors=RuntimeError, expect_errors_at_least="x")
        def test_bad_count(uvicorn_server):
            pass
        """
    )
    result = pytester.runpytest("-ra")
    result.assert_outcomes(passed=3, errors=2)  # test_raises_too_often fails at its teardown
    result.stdout.fnmatch_lines(
        [
            "*expected the app to raise RuntimeError at most 1 time in this test; it raised 2*",
            "*expect_errors(at_least=...) takes a whole number of errors, not 'x'*",
        ]
    )

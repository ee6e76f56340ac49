"""The pytest plugin's diagnostics: a failing test explains itself, app errors fail the test that caused them.

Each test writes a small project with `pytester`, runs pytest on it in this process, and
asserts the outcomes and the report text a user would read.
"""

from __future__ import annotations

import logging
import time

import pytest
import requests  # noqa: F401 - loaded once here: in-process runs would import a second copy, which breaks it

APP = """
    import asyncio
    import logging

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        return PlainTextResponse("hello")

    async def boom(request):
        raise ZeroDivisionError("the handler divided by zero")

    async def shout(request):
        logging.getLogger("uvicorn.error").warning("the app says: %s", request.query_params.get("word"))
        return PlainTextResponse("shouted")

    app = Starlette(routes=[Route("/", hello), Route("/boom", boom), Route("/shout", shout)])
"""


def make_project(pytester: pytest.Pytester, ini: str = "uvicorn_app = myapp:app", **files: str) -> None:
    """Write pytest.ini, the app module ``myapp`` and `files` (name -> source)."""
    pytester.makeini(f"[pytest]\nasyncio_default_fixture_loop_scope = function\n{ini}\n")
    pytester.makepyfile(myapp=APP, **files)


# -- the report section ---------------------------------------------------------------------


def test_failing_test_report_has_the_server_log_of_that_test(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_it="""
            import requests

            def test_earlier(uvicorn_server):
                requests.get(uvicorn_server.url("/shout?word=earlier"), timeout=30)

            def test_fails(uvicorn_server):
                assert requests.get(uvicorn_server.url("/shout?word=during"), timeout=30).text == "shouted"
                assert False, "the test's own failure"
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: the test's own failure*",
            "*- uvicorn server log: 'myapp:app' on 127.0.0.1:* -*",
            "* WARNING  uvicorn.error: the app says: during",
            '* INFO     uvicorn.access: 127.0.0.1:* - "GET /shout?word=during HTTP/1.1" 200',
        ]
    )
    section = result.stdout.str().split("uvicorn server log")[1]
    assert "earlier" not in section, "the section shows only what the server logged during the failing test"


def test_passing_test_shows_no_server_section(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_it="""
            import requests

            def test_passes(uvicorn_server):
                assert requests.get(uvicorn_server.url("/shout?word=hi"), timeout=30).text == "shouted"
        """,
    )
    result = pytester.runpytest("-rA")  # -rA prints the captured sections of passing tests too
    result.assert_outcomes(passed=1)
    assert "uvicorn server log" not in result.stdout.str()


def test_section_lists_app_errors_the_log_level_hid(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        ini="uvicorn_app = myapp:app\nuvicorn_log_level = critical",
        test_it="""
            import logging

            import requests

            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)  # the project silences uvicorn's errors

            def test_fails(fresh_uvicorn_server):
                assert requests.get(fresh_uvicorn_server.url("/boom"), timeout=30).status_code == 200
        """,
    )
    level = logging.getLogger("uvicorn.error").level
    try:
        result = pytester.runpytest()
    finally:
        logging.getLogger("uvicorn.error").setLevel(level)  # the run is in this process
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- uvicorn server log: 'myapp:app' on 127.0.0.1:* -*",
            "(the server logged nothing during this test)",
            "The app raised 1 unhandled exception during this test:",
            "Traceback (most recent call last):",
            "*raise ZeroDivisionError*",
            "ZeroDivisionError: the handler divided by zero",
        ]
    )


# -- app errors fail the test that caused them ---------------------------------------------------

USES_SERVER = {
    "uvicorn_server": "uvicorn_server",
    "fresh_uvicorn_server": "fresh_uvicorn_server",
    "uvicorn_server_factory": "uvicorn_server_factory('myapp:app')",
}


@pytest.mark.parametrize("fixture", list(USES_SERVER))
def test_app_error_fails_a_passing_test_at_teardown(pytester: pytest.Pytester, fixture: str) -> None:
    server = USES_SERVER[fixture]
    make_project(
        pytester,
        test_it=f"""
            import requests

            def test_sees_only_a_500({fixture}):
                server = {server}
                assert requests.get(server.url("/boom"), timeout=30).status_code == 500

            def test_next_is_not_blamed({fixture}):
                server = {server}
                assert requests.get(server.url("/"), timeout=30).text == "hello"
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_sees_only_a_500*",
            "ZeroDivisionError: the handler divided by zero in GET /boom",
            "the app 'myapp:app' raised 1 unhandled exception while serving on http://127.0.0.1:*; its traceback is "
            "in the 'uvicorn server log' section below.",
            "Fix the app, or if the test provokes it on purpose: @pytest.mark.uvicorn("
            "expect_errors=ZeroDivisionError).",
            "*- uvicorn server log: 'myapp:app' on 127.0.0.1:* -*",
            '*"GET /boom HTTP/1.1" 500',
            "* ERROR    uvicorn.error: Exception in ASGI application [[]ZeroDivisionError, traceback below[]]",
            "The app raised 1 unhandled exception during this test:",
            "*Traceback (most recent call last):",
            "*raise ZeroDivisionError*",
            "*ZeroDivisionError: the handler divided by zero",
            "*short test summary info*",
            "ERROR test_it.py::test_sees_only_a_500 - ZeroDivisionError: the handler divid*",
        ]
    )


def test_app_error_in_a_failing_test_is_reported_once(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_it="""
            import requests

            def test_expects_200(uvicorn_server):
                assert requests.get(uvicorn_server.url("/boom"), timeout=30).status_code == 200
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)  # no error at teardown on top
    result.stdout.fnmatch_lines(
        [
            "*assert 500 == 200*",
            "*- uvicorn server log: 'myapp:app' on 127.0.0.1:* -*",
            "* ERROR    uvicorn.error: Exception in ASGI application [[]ZeroDivisionError, traceback below[]]",
            "The app raised 1 unhandled exception during this test:",
            "Traceback (most recent call last):",
            "ZeroDivisionError: the handler divided by zero",
        ]
    )


@pytest.mark.parametrize("fixture", ["uvicorn_server", "fresh_uvicorn_server"])
def test_marker_lets_a_test_provoke_app_errors(pytester: pytest.Pytester, fixture: str) -> None:
    make_project(
        pytester,
        test_it=f"""
            import pytest
            import requests

            @pytest.mark.uvicorn(raise_server_exceptions=False)
            def test_provokes_a_500({fixture}):
                assert requests.get({fixture}.url("/boom"), timeout=30).status_code == 500

            def test_next_is_not_blamed({fixture}):
                assert requests.get({fixture}.url("/"), timeout=30).text == "hello"
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)


def test_ini_option_turns_app_error_failures_off(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        ini="uvicorn_app = myapp:app\nuvicorn_raise_server_exceptions = false",
        test_it="""
            import pytest
            import requests

            def test_provokes_a_500(uvicorn_server):
                assert requests.get(uvicorn_server.url("/boom"), timeout=30).status_code == 500

            @pytest.mark.uvicorn(raise_server_exceptions=True)
            def test_opts_back_in(uvicorn_server):
                assert requests.get(uvicorn_server.url("/boom"), timeout=30).status_code == 500
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_it.py::test_opts_back_in - ZeroDivisionError: the handler divided*"])


def test_error_raised_by_stop_in_the_test_is_not_reported_again(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_it="""
            import pytest
            import requests
            from uvicorn_testserver import ServerExceptionsError

            def test_checks_stop(fresh_uvicorn_server):
                assert requests.get(fresh_uvicorn_server.url("/boom"), timeout=30).status_code == 500
                with pytest.raises(ServerExceptionsError, match="ZeroDivisionError"):
                    fresh_uvicorn_server.stop()
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)


def test_hand_started_server_keeps_the_class_behaviour(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_it="""
            import requests
            from uvicorn_testserver import UvicornTestServer

            def test_own_server(uvicorn_server):
                assert requests.get(uvicorn_server.url("/"), timeout=30).text == "hello"
                with UvicornTestServer("myapp:app") as server:
                    assert requests.get(server.url("/boom"), timeout=30).status_code == 500
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)  # failed once, by the class's own stop(); no error at teardown
    output = result.stdout.str()
    assert output.count("ZeroDivisionError: the handler divided by zero") >= 1
    result.stdout.fnmatch_lines(["FAILED test_it.py::test_own_server - ZeroDivisionError: the handler divided*"])
    # The plugin's section is about its own server, which served only "GET /" in this test.
    section = output.split("uvicorn server log")[1].split("short test summary info")[0]
    assert '"GET / HTTP/1.1" 200' in section
    assert "/boom" not in section


# -- pytest's own log capture ---------------------------------------------------------------------


def test_server_log_reaches_caplog_and_captured_log(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_it="""
            import requests

            def test_caplog(uvicorn_server, caplog):
                requests.get(uvicorn_server.url("/shout?word=caplog"), timeout=30)
                messages = [(record.name, record.getMessage()) for record in caplog.records]
                assert ("uvicorn.error", "the app says: caplog") in messages
                assert any(name == "uvicorn.access" and "GET /shout?word=caplog" in text for name, text in messages)

            def test_fails(uvicorn_server):
                requests.get(uvicorn_server.url("/shout?word=captured"), timeout=30)
                assert False
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*- Captured log call -*", "WARNING  uvicorn.error:*the app says: captured", "*uvicorn server log*"]
    )


# -- a server that does not start ------------------------------------------------------------------

BROKEN = """
    import asyncio
    import contextlib

    from starlette.applications import Starlette

    @contextlib.asynccontextmanager
    async def fails(app):
        raise RuntimeError("database unreachable")
        yield

    @contextlib.asynccontextmanager
    async def hangs(app):
        await asyncio.Event().wait()
        yield

    fails_app = Starlette(lifespan=fails)
    hangs_app = Starlette(lifespan=hangs)
"""


def test_server_that_fails_to_start_errors_the_tests_that_use_it(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        ini="uvicorn_app = broken:fails_app",
        broken=BROKEN,
        test_it="""
            def test_one(uvicorn_server):
                pass

            def test_two(uvicorn_server):
                pass

            def test_without_server():
                pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_one*",
            "uvicorn server for 'broken:fails_app' on 127.0.0.1:* failed to start: "
            "lifespan startup raised RuntimeError('database unreachable') (after *s).",
            "--- server log (last lines) ---",
            "*uvicorn.error: Waiting for application startup.",
        ]
    )


def test_server_that_hangs_at_startup_errors_within_the_startup_timeout(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        ini="uvicorn_app = broken:hangs_app\nuvicorn_startup_timeout = 0.5",
        broken=BROKEN,
        test_it="""
            def test_one(fresh_uvicorn_server):
                pass
        """,
    )
    started_at = time.monotonic()
    result = pytester.runpytest()
    elapsed = time.monotonic() - started_at
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*was not ready within startup_timeout=0.5s*"])
    # Generous: a whole pytest run on a busy machine; a hang would last until the 60 s test timeout.
    assert elapsed < 30, f"the run took {elapsed:.1f}s with a 0.5 s startup timeout"


# -- the README's failing example ------------------------------------------------------------------


def test_readme_failing_example_explains_itself(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nuvicorn_app = calc:app\n")
    pytester.makepyfile(
        calc="""
            from starlette.applications import Starlette
            from starlette.responses import JSONResponse
            from starlette.routing import Route


            async def divide(request):
                return JSONResponse({"result": 1 / int(request.query_params["by"])})


            app = Starlette(routes=[Route("/divide", divide)])
        """,
        test_calc="""
            import requests


            def test_divide(uvicorn_server):
                response = requests.get(uvicorn_server.url("/divide?by=4"), timeout=30)
                assert response.json() == {"result": 0.25}


            def test_divide_by_zero_is_a_400(uvicorn_server):
                response = requests.get(uvicorn_server.url("/divide?by=0"), timeout=30)
                assert response.status_code == 400


            def test_divide_by_zero_is_refused(uvicorn_server):
                response = requests.get(uvicorn_server.url("/divide?by=0"), timeout=30)
                assert not response.ok
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at teardown of test_divide_by_zero_is_refused _*",
            "the app 'calc:app' raised 1 unhandled exception while serving on http://127.0.0.1:*; its traceback is*",
            "Traceback (most recent call last):",
            '  File "*calc.py", line 7, in divide',
            "ZeroDivisionError: division by zero",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_divide_by_zero_is_a_400 _*",
            "E       assert 500 == 400",
            "*- Captured log call -*",
            # pytest's own capture: the line, once; the traceback is in the server's section only.
            "ERROR    uvicorn.error:*Exception in ASGI application [[]ZeroDivisionError traceback: in the report's "
            "uvicorn server log section[]]",
            "*- uvicorn server log: 'calc:app' on 127.0.0.1:* -*",
            '* INFO     uvicorn.access: 127.0.0.1:* - "GET /divide?by=0 HTTP/1.1" 500',
            "* ERROR    uvicorn.error: Exception in ASGI application [[]ZeroDivisionError, traceback below[]]",
            "The app raised 1 unhandled exception during this test:",
            "Traceback (most recent call last):",
            '*return JSONResponse({"result": 1 / int(request.query_params[[]"by"[]])})*',
            "ZeroDivisionError: division by zero",
        ]
    )
    assert "by=4" not in result.stdout.str(), "the passing test's requests are not in the failing test's section"


def test_the_expect_errors_marker_scopes_expected_app_errors_to_one_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the short summary cuts its lines at the terminal's width
    pytester.makeini("[pytest]\nuvicorn_app = myapp:app\n")
    pytester.makepyfile(
        myapp="""
            from starlette.applications import Starlette
            from starlette.responses import PlainTextResponse
            from starlette.routing import Route

            async def divide(request):
                return PlainTextResponse(str(1 / int(request.query_params.get("by", "0"))))

            app = Starlette(routes=[Route("/divide", divide)])
        """,
        test_a="""
            import pytest
            import requests

            @pytest.mark.uvicorn(expect_errors=ZeroDivisionError)
            def test_provokes_it(uvicorn_server):
                assert requests.get(uvicorn_server.url("/divide"), timeout=30).status_code == 500

            @pytest.mark.uvicorn(expect_errors=ZeroDivisionError)
            def test_expects_it_but_it_never_comes(uvicorn_server):
                assert requests.get(uvicorn_server.url("/divide?by=2"), timeout=30).text == "0.5"

            @pytest.mark.uvicorn(expect_errors=ZeroDivisionError)
            def test_another_error_still_fails(uvicorn_server):
                assert requests.get(uvicorn_server.url("/divide?by=zero"), timeout=30).status_code == 500

            def test_the_shared_server_still_reports_errors(uvicorn_server):
                assert requests.get(uvicorn_server.url("/divide"), timeout=30).status_code == 500
        """,
    )
    result = pytester.runpytest_subprocess("-ra")
    result.assert_outcomes(passed=4, errors=3)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR test_a.py::test_expects_it_but_it_never_comes - AssertionError: *ZeroDivisionError in this test;*",
            "ERROR test_a.py::test_another_error_still_fails - ValueError: invalid literal*",
            "ERROR test_a.py::test_the_shared_server_still_reports_errors - *ZeroDivisionError: division by zero in*",
        ]
    )


def test_a_request_left_in_flight_is_named_on_the_test_and_cut_after_a_short_grace(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nuvicorn_app = uvicorn_testserver.demo:app\nuvicorn_shutdown_timeout = 20\n")
    pytester.makepyfile(
        test_a="""
            import socket

            import requests

            opened = []

            def test_leaves_a_stream_open(fresh_uvicorn_server):
                client = socket.create_connection(("127.0.0.1", fresh_uvicorn_server.port), timeout=30)
                client.sendall(b"GET /events HTTP/1.1\\r\\nHost: test\\r\\n\\r\\n")
                assert client.recv(4096).startswith(b"HTTP/1.1 200 OK")
                opened.append(client)  # never closed: the server still streams at teardown

            def test_closes_what_it_opens(fresh_uvicorn_server):
                with requests.get(fresh_uvicorn_server.url("/events?count=2"), stream=True, timeout=30) as response:
                    assert list(response.iter_lines())
        """
    )
    result = pytester.runpytest_subprocess("--durations=0", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "test_a.py::test_leaves_a_stream_open",
            # Located at the test that leaked, not at the plugin's line.
            "*test_a.py:*: InFlightWarning: test_a.py::test_leaves_a_stream_open ended with 1 request(s) still in "
            "flight on http://127.0.0.1:* (cutting it after uvicorn_teardown_grace): GET /events (running *",
        ]
    )
    assert "test_closes_what_it_opens\n  " not in result.stdout.str()  # only the leaking test is named
    [teardown] = [
        line for line in result.stdout.lines if line.endswith("teardown test_a.py::test_leaves_a_stream_open")
    ]
    seconds = float(teardown.split("s", 1)[0])
    assert seconds < 10, teardown  # cut after the 0.5 s grace, not after shutdown_timeout=20

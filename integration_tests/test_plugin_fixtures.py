"""The pytest plugin's fixtures, options and marker, tested on small projects written with `pytester`."""

from __future__ import annotations

import textwrap
import threading

import anyio  # these are loaded once here: in-process runs would import second copies
import anyio.pytest_plugin
import httpx  # noqa: F401
import pytest
import requests  # noqa: F401

APP = """
    import os

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        return PlainTextResponse("hello")

    async def whoami(request):
        return JSONResponse({"port": request.scope["server"][1], "root_path": request.scope.get("root_path", "")})

    app = Starlette(routes=[Route("/", hello), Route("/whoami", whoami)])
    other_app = Starlette(routes=[Route("/other", hello)])
"""

#: A conftest whose `record` fixture appends "test-id server-id port" lines to servers.txt.
RECORDING_CONFTEST = """
    import pytest

    SEEN = []  # keeps every server alive, so that id() stays unique

    @pytest.fixture
    def record(request, pytestconfig):
        def record(server):
            SEEN.append(server)
            with open(pytestconfig.rootpath / "servers.txt", "a") as file:
                file.write(f"{request.node.nodeid} {id(server)} {server.port}\\n")
        return record
"""


def make_project(pytester: pytest.Pytester, ini: str = "uvicorn_app = myapp:app", **files: str) -> None:
    """Write pytest.ini, the app module ``myapp`` and `files` (name -> source)."""
    pytester.makeini(f"[pytest]\nasyncio_default_fixture_loop_scope = function\n{ini}\n")
    pytester.makepyfile(myapp=APP, **files)


def recorded_servers(pytester: pytest.Pytester) -> dict[str, str]:
    """test id -> server id, from servers.txt."""
    lines = (pytester.path / "servers.txt").read_text().splitlines()
    return {test: server for test, server, _port in (line.split() for line in lines)}


# -- uvicorn_server ------------------------------------------------------------------------------

SHARED_TESTS = """
    import requests

    def test_one(uvicorn_server, record):
        record(uvicorn_server)
        assert requests.get(uvicorn_server.url("/"), timeout=30).text == "hello"

    def test_two(uvicorn_server, record):
        record(uvicorn_server)
        assert requests.get(uvicorn_server.url("/"), timeout=30).text == "hello"
"""


def test_uvicorn_server_is_one_server_for_the_session(pytester: pytest.Pytester) -> None:
    make_project(pytester, test_a=SHARED_TESTS, test_b=SHARED_TESTS)
    pytester.makeconftest(RECORDING_CONFTEST)
    result = pytester.runpytest()
    result.assert_outcomes(passed=4)
    servers = recorded_servers(pytester)
    assert len(servers) == 4
    assert len(set(servers.values())) == 1


def make_packages(pytester: pytest.Pytester, scope: str, package_conftest: str = "") -> None:
    """Two packages of two test modules of two tests each, all recording the uvicorn_server they got."""
    make_project(pytester, ini=f"uvicorn_app = myapp:app\nuvicorn_server_scope = {scope}\npythonpath = .")
    pytester.makeconftest(RECORDING_CONFTEST)
    for package in ("first", "second"):
        pytester.mkpydir(package)
        (pytester.path / package / "conftest.py").write_text(package_conftest)
        for module in ("test_a", "test_b"):
            (pytester.path / package / f"{module}.py").write_text(textwrap.dedent(SHARED_TESTS))


@pytest.mark.parametrize(("scope", "expected"), [("session", 1), ("module", 4), ("function", 8)])
def test_uvicorn_server_scope_comes_from_the_ini_option(pytester: pytest.Pytester, scope: str, expected: int) -> None:
    make_packages(pytester, scope)
    result = pytester.runpytest("--import-mode=importlib")
    result.assert_outcomes(passed=8)
    assert len(set(recorded_servers(pytester).values())) == expected


def test_package_scope_gives_each_package_that_imports_the_fixture_its_own_server(pytester: pytest.Pytester) -> None:
    # pytest scopes a package fixture to the package that defines it; the plugin defines it at the root.
    make_packages(pytester, "package", package_conftest="from uvicorn_testserver.plugin import uvicorn_server\n")
    result = pytester.runpytest("--import-mode=importlib")
    result.assert_outcomes(passed=8)
    servers = recorded_servers(pytester)
    assert len({servers[test] for test in servers if test.startswith("first/")}) == 1
    assert len({servers[test] for test in servers if test.startswith("second/")}) == 1
    assert len(set(servers.values())) == 2


def test_uvicorn_server_scope_from_the_command_line_wins(pytester: pytest.Pytester) -> None:
    make_project(pytester, ini="uvicorn_app = myapp:app\nuvicorn_server_scope = session", test_a=SHARED_TESTS)
    pytester.makeconftest(RECORDING_CONFTEST)
    result = pytester.runpytest("--uvicorn-server-scope=function")
    result.assert_outcomes(passed=2)
    assert len(set(recorded_servers(pytester).values())) == 2


def test_invalid_scope_is_a_usage_error_listing_the_valid_ones(pytester: pytest.Pytester) -> None:
    make_project(pytester, ini="uvicorn_app = myapp:app\nuvicorn_server_scope = class", test_a=SHARED_TESTS)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: uvicorn_server_scope must be one of session, package, module, function, run, not 'class'."]
    )


def test_every_server_is_stopped_when_the_session_ends(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_a="""
            def test_all(uvicorn_server, fresh_uvicorn_server, uvicorn_server_factory):
                uvicorn_server_factory("myapp:other_app")
        """,
    )
    threads_before = set(threading.enumerate())
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    left = [thread.name for thread in set(threading.enumerate()) - threads_before]
    assert left == [], f"server threads still running after the session: {left}"


# -- fresh_uvicorn_server and uvicorn_server_factory -------------------------------------------------


def test_fresh_uvicorn_server_is_new_for_each_test_and_stopped_after(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_a="""
            import requests

            seen = []

            def test_one(fresh_uvicorn_server):
                seen.append(fresh_uvicorn_server)
                assert requests.get(fresh_uvicorn_server.url("/whoami"), timeout=30).json()["port"] == seen[0].port

            def test_two(fresh_uvicorn_server):
                assert fresh_uvicorn_server is not seen[0]
                assert not seen[0].is_running
                assert fresh_uvicorn_server.is_running
        """,
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_a_tests_own_servers_are_not_kept_once_it_is_done(pytester: pytest.Pytester) -> None:
    # Kept by the session, each would hold its log, config and closed loop: ~30 KB a test.
    make_project(
        pytester,
        test_a="""
            import gc
            import weakref

            import requests

            servers = []

            def test_one(fresh_uvicorn_server, uvicorn_server_factory):
                servers.append(weakref.ref(fresh_uvicorn_server))
                servers.append(weakref.ref(uvicorn_server_factory("myapp:other_app")))
                assert requests.get(fresh_uvicorn_server.url("/"), timeout=30).text == "hello"

            def test_two():
                gc.collect()
                assert [server() for server in servers] == [None, None]
        """,
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_factory_serves_any_app_and_stops_every_server_after_the_test(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_a="""
            import requests

            made = []

            def test_makes_two(uvicorn_server_factory):
                made.append(uvicorn_server_factory("myapp:other_app"))
                made.append(uvicorn_server_factory("myapp:app", health_path="/whoami"))
                assert requests.get(made[0].url("/other"), timeout=30).text == "hello"
                assert made[1].health_path == "/whoami"
                assert made[0].port != made[1].port

            def test_they_are_stopped():
                assert [server.is_running for server in made] == [False, False]
        """,
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_factory_stops_every_server_even_when_one_stop_raises(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        stuck="""
            import contextlib
            import time

            from starlette.applications import Starlette

            @contextlib.asynccontextmanager
            async def blocks_at_shutdown(app):
                yield
                time.sleep(30)  # blocks the event loop far past the 4.1 s that stop() waits with shutdown_timeout=0.1

            app = Starlette(lifespan=blocks_at_shutdown)
        """,
        test_a="""
            made = []

            def test_makes_two(uvicorn_server_factory):
                made.append(uvicorn_server_factory("myapp:app"))
                made.append(uvicorn_server_factory("stuck:app", shutdown_timeout=0.1))

            def test_the_other_is_stopped():
                assert not made[0].is_running
        """,
    )
    result = pytester.runpytest_subprocess()  # leaves a stuck daemon thread behind: keep it out of this process
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_makes_two*",
            "E   *ServerShutdownError: uvicorn server for 'stuck:app' * did not stop*",
        ]
    )


# -- uvicorn_app ----------------------------------------------------------------------------------

WHOAMI_TEST = """
    import requests

    def test_serves_the_app(uvicorn_server):
        assert requests.get(uvicorn_server.url("/"), timeout=30).text == "hello"
"""


def test_uvicorn_app_from_the_command_line(pytester: pytest.Pytester) -> None:
    make_project(pytester, ini="", test_a=WHOAMI_TEST)
    result = pytester.runpytest("--uvicorn-app=myapp:app")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["uvicorn-testserver *, uvicorn *, uvicorn_app: myapp:app, uvicorn_server scope: session"]
    )


def test_uvicorn_app_overridden_in_conftest(pytester: pytest.Pytester) -> None:
    make_project(pytester, ini="", test_a=WHOAMI_TEST)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def uvicorn_app():
            from myapp import app
            return app
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_unset_uvicorn_app_is_a_usage_error_naming_the_three_ways(pytester: pytest.Pytester) -> None:
    make_project(pytester, ini="", test_a=WHOAMI_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "E   *UsageError: uvicorn_server and fresh_uvicorn_server need the app under test, and none is configured. "
            'Set it in one of three ways: the ini option uvicorn_app = "package.module:app" (in pytest.ini, or '
            "[[]tool.pytest.ini_options[]] in pyproject.toml); the command-line option "
            "--uvicorn-app=package.module:app; or a uvicorn_app fixture (scope='session') in your conftest.py "
            "that returns the app."
        ]
    )


def test_uvicorn_app_from_pyproject(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        asyncio_default_fixture_loop_scope = "function"
        uvicorn_app = "myapp:app"
        uvicorn_options = ["root_path=/api"]
        """
    )
    pytester.makepyfile(
        myapp=APP,
        test_a="""
            import requests

            def test_root_path(uvicorn_server):
                assert requests.get(uvicorn_server.url("/whoami"), timeout=30).json()["root_path"] == "/api"
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


# -- options and the marker --------------------------------------------------------------------------


def test_ini_and_command_line_options_reach_the_servers(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        ini="""uvicorn_app = myapp:app
uvicorn_health_path = /whoami
uvicorn_startup_timeout = 7.5
uvicorn_shutdown_timeout = 2
uvicorn_log_level = warning
uvicorn_options =
    root_path=/api
    timeout_keep_alive=3""",
        test_a="""
            def test_options(fresh_uvicorn_server):
                server = fresh_uvicorn_server
                assert server.host == "127.0.0.1"
                assert server.health_path == "/whoami"
                assert (server.startup_timeout, server.shutdown_timeout) == (7.5, 2.0)
                assert server.log_level == "debug"  # the command line wins
                assert server.raise_server_exceptions is True
                assert server.uvicorn_options == {"root_path": "/api", "timeout_keep_alive": 3, "http": "h11"}
        """,
    )
    result = pytester.runpytest("--uvicorn-log-level=debug", "--uvicorn-options=http=h11")
    result.assert_outcomes(passed=1)


def test_default_log_level_is_info_so_access_lines_are_kept(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_a="""
            import requests

            def test_log(uvicorn_server):
                requests.get(uvicorn_server.url("/"), timeout=30)
                assert uvicorn_server.log_level == "info"
                assert '"GET / HTTP/1.1" 200' in uvicorn_server.log.text
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_marker_sets_options_per_test_and_the_closest_wins(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_a="""
            import pytest
            import requests

            pytestmark = pytest.mark.uvicorn(log_level="warning", root_path="/module")

            @pytest.mark.uvicorn(health_path="/whoami", root_path="/test")
            def test_marked(fresh_uvicorn_server, uvicorn_server_factory):
                for server in (fresh_uvicorn_server, uvicorn_server_factory("myapp:app")):
                    assert server.health_path == "/whoami"
                    assert server.log_level == "warning"
                    assert requests.get(server.url("/whoami"), timeout=30).json()["root_path"] == "/test"

            def test_module_mark_only(fresh_uvicorn_server, uvicorn_server_factory):
                assert fresh_uvicorn_server.uvicorn_options == {"root_path": "/module"}
                server = uvicorn_server_factory("myapp:app", root_path="/kwarg")
                assert server.uvicorn_options == {"root_path": "/kwarg"}
        """,
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_module_marker_configures_a_module_scoped_uvicorn_server(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        ini="uvicorn_app = myapp:app\nuvicorn_server_scope = module",
        test_a="""
            import pytest

            pytestmark = pytest.mark.uvicorn(health_path="/whoami")

            def test_marked(uvicorn_server):
                assert uvicorn_server.health_path == "/whoami"
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_marker_that_would_change_the_shared_server_is_an_error(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_a="""
            import pytest

            def test_plain(uvicorn_server):
                pass

            @pytest.mark.uvicorn(health_path="/whoami")
            def test_marked(uvicorn_server):
                pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "E   *UsageError: test_a.py::test_marked asks for health_path='/whoami' with @pytest.mark.uvicorn, but "
            "uvicorn_server is shared (scope 'session') and was started without it. Use fresh_uvicorn_server*"
        ]
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('log_level="loud"', "log_level must be one of critical, error, warning, info, debug, trace, not 'loud'."),
        ("startup_timeout=0", "startup_timeout must be a positive number of seconds, not 0."),
        ("workers=2", "uvicorn-testserver does not accept 'workers': *"),
        ("no_such_option=1", "'no_such_option' is not an option of the server nor of uvicorn.Config *"),
        ('"/health"', "@pytest.mark.uvicorn takes keyword arguments only*"),
        ('mode="loop"', "@pytest.mark.uvicorn on *: mode must be 'thread' or 'process' (mode='loop' runs on your *"),
    ],
)
def test_invalid_marker_options_are_reported(pytester: pytest.Pytester, marker: str, message: str) -> None:
    make_project(
        pytester,
        test_a=f"""
            import pytest

            @pytest.mark.uvicorn({marker})
            def test_marked(fresh_uvicorn_server):
                pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"E   *UsageError: *{message}"])


@pytest.mark.parametrize(
    ("ini", "message"),
    [
        ("uvicorn_log_level = loud", "uvicorn_log_level must be one of critical, *, not 'loud'."),
        ("uvicorn_startup_timeout = soon", "uvicorn_startup_timeout must be a positive number of seconds, not 'soon'."),
        ("uvicorn_options = workers=2", "uvicorn_options: uvicorn-testserver does not accept 'workers': *"),
        ("uvicorn_options = port=8000", "uvicorn_options cannot set 'port': *"),
        ("uvicorn_options = h11", "uvicorn_options takes key=value lines such as http=h11, not 'h11'."),
        ("uvicorn_raise_server_exceptions = maybe", "*'maybe'*"),
    ],
)
def test_invalid_options_are_usage_errors(pytester: pytest.Pytester, ini: str, message: str) -> None:
    make_project(pytester, ini=f"uvicorn_app = myapp:app\n{ini}", test_a=WHOAMI_TEST)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_markers_help_and_header_document_the_plugin(pytester: pytest.Pytester) -> None:
    make_project(pytester)
    pytester.runpytest("--markers").stdout.fnmatch_lines(
        ["@pytest.mark.uvicorn(**options): options for the servers uvicorn-testserver's fixtures start*"]
    )
    help_text = pytester.runpytest("--help")
    help_text.stdout.fnmatch_lines(["live uvicorn servers (uvicorn-testserver):", "  --uvicorn-app=UVICORN_APP"])
    for name in (
        "uvicorn_app",
        "uvicorn_server_scope",
        "uvicorn_host",
        "uvicorn_health_path",
        "uvicorn_startup_timeout",
        "uvicorn_shutdown_timeout",
        "uvicorn_log_level",
        "uvicorn_raise_server_exceptions",
        "uvicorn_options",
    ):
        help_text.stdout.fnmatch_lines([f"  {name} (*):*"])


# -- async tests ------------------------------------------------------------------------------------

ASYNC_TESTS = {
    "asyncio-strict": (
        "",
        """
        import httpx
        import pytest

        @pytest.mark.asyncio
        async def test_shared(uvicorn_server):
            async with httpx.AsyncClient() as client:
                assert (await client.get(uvicorn_server.url("/"))).text == "hello"

        @pytest.mark.asyncio
        async def test_fresh(fresh_uvicorn_server):
            async with httpx.AsyncClient() as client:
                assert (await client.get(fresh_uvicorn_server.url("/"))).text == "hello"
        """,
    ),
    "asyncio-auto": (
        "asyncio_mode = auto",
        """
        import httpx

        async def test_shared(uvicorn_server):
            async with httpx.AsyncClient() as client:
                assert (await client.get(uvicorn_server.url("/"))).text == "hello"

        async def test_fresh(fresh_uvicorn_server):
            async with httpx.AsyncClient() as client:
                assert (await client.get(fresh_uvicorn_server.url("/"))).text == "hello"
        """,
    ),
    "anyio": (
        "",
        """
        import httpx
        import pytest

        @pytest.mark.anyio
        async def test_shared(uvicorn_server):
            async with httpx.AsyncClient() as client:
                assert (await client.get(uvicorn_server.url("/"))).text == "hello"

        @pytest.mark.anyio
        async def test_fresh(uvicorn_server_factory):
            server = uvicorn_server_factory("myapp:app")
            async with httpx.AsyncClient() as client:
                assert (await client.get(server.url("/"))).text == "hello"
        """,
    ),
}


@pytest.mark.parametrize("runner", list(ASYNC_TESTS))
def test_fixtures_work_in_async_tests(pytester: pytest.Pytester, runner: str) -> None:
    ini, tests = ASYNC_TESTS[runner]
    make_project(pytester, ini=f"uvicorn_app = myapp:app\n{ini}", test_a=tests)
    # anyio runs each test under every backend installed: asyncio, and trio (a dev dependency).
    available = anyio.pytest_plugin.get_available_backends  # type: ignore[attr-defined]
    backends = len(available()) if runner == "anyio" else 1
    pytester.runpytest().assert_outcomes(passed=2 * backends)


# -- the README's example project ---------------------------------------------------------------------


def test_readme_example_project(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        uvicorn_app = "uvicorn_testserver.demo:app"
        uvicorn_options = ["timeout_keep_alive=5"]
        asyncio_default_fixture_loop_scope = "function"
        """
    )
    pytester.makepyfile(
        test_demo="""
            import httpx
            import pytest
            import requests


            def test_health(uvicorn_server):
                response = requests.get(uvicorn_server.url("/health"), timeout=30)
                assert response.json() == {"message": "OK"}


            @pytest.mark.asyncio
            async def test_health_async(uvicorn_server):
                async with httpx.AsyncClient(base_url=uvicorn_server.base_url) as client:
                    response = await client.get("/health")
                assert response.json() == {"message": "OK"}


            @pytest.mark.uvicorn(health_path="/health", log_level="debug")
            def test_echo(fresh_uvicorn_server):
                response = requests.post(fresh_uvicorn_server.url("/api/data"), json={"n": 1}, timeout=30)
                assert response.json() == {"received": {"n": 1}}


            def test_two_servers(uvicorn_server_factory):
                api = uvicorn_server_factory("uvicorn_testserver.demo:app", root_path="/api")
                other = uvicorn_server_factory("uvicorn_testserver.demo:app")
                assert api.port != other.port
        """,
    )
    pytester.runpytest().assert_outcomes(passed=4)


def test_a_marker_runs_a_fixture_server_in_process_mode(pytester: pytest.Pytester) -> None:
    make_project(
        pytester,
        test_a="""
            import os

            import pytest
            import requests

            @pytest.mark.uvicorn(mode="process")
            def test_in_a_child(fresh_uvicorn_server):
                assert fresh_uvicorn_server.mode == "process"
                assert fresh_uvicorn_server.pid != os.getpid()
                assert requests.get(fresh_uvicorn_server.url("/"), timeout=30).text == "hello"
        """,
    )
    pytester.runpytest_subprocess().assert_outcomes(passed=1)

"""What a failing test's report says when the app raised: each traceback at most twice, the cause in one line."""

from __future__ import annotations

import pytest

APP = """
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def divide(request):
        return 1 / 0  # the app's own frame

    app = Starlette(routes=[Route("/divide", divide)])
"""

PATHS = {
    "with": """
        import requests
        from uvicorn_testserver import UvicornTestServer
        from myapp import app

        def test_divides():
            with UvicornTestServer(app) as server:
                assert requests.get(server.url("/divide"), timeout=30).status_code == 500
    """,
    "stop": """
        import requests
        from uvicorn_testserver import UvicornTestServer
        from myapp import app

        def test_divides():
            server = UvicornTestServer(app).start()
            assert requests.get(server.url("/divide"), timeout=30).status_code == 500
            server.stop()
    """,
    "create_test_server": """
        import pytest
        from uvicorn_testserver import create_test_server
        from myapp import app

        @pytest.mark.asyncio
        async def test_divides():
            async with create_test_server(app) as server:
                assert (await server.client.get("/divide")).status_code == 500
    """,
    "fresh_uvicorn_server": """
        import requests

        def test_divides(fresh_uvicorn_server):
            assert requests.get(fresh_uvicorn_server.url("/divide"), timeout=30).status_code == 500
    """,
    "uvicorn_server": """
        import requests

        def test_divides(uvicorn_server):
            assert requests.get(uvicorn_server.url("/divide"), timeout=30).status_code == 500
    """,
}


@pytest.mark.parametrize("path", list(PATHS))
def test_the_apps_traceback_is_printed_at_most_twice_and_the_summary_names_the_cause(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the short summary cuts its lines at the terminal's width
    pytester.makeini("[pytest]\nuvicorn_app = myapp:app\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(myapp=APP, test_a=PATHS[path])
    result = pytester.runpytest_subprocess("-ra", "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(**({"passed": 1, "errors": 1} if "uvicorn_server" in path else {"failed": 1}))
    output = result.stdout.str()
    assert 1 <= output.count("return 1 / 0  # the app's own frame") <= 2, output
    result.stdout.fnmatch_lines(
        ["* - ZeroDivisionError: division by zero in GET /divide"]  # the app's exception first, not the harness's
    )
    assert "uvicorn_testserver._core.errors" not in output

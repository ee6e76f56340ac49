"""pytest-playwright wired to the live server: ``uvicorn_base_url = true`` and ``page.goto("/")`` reaches the app.

Each test runs a pytest of its own (pytester) with pytest-playwright loaded and Debian's
Chromium, with the sync API (pytest-playwright's ``page`` fixture) and with the async API.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.timeout(240)

APP_DIR = Path(__file__).resolve().parent

CONFTEST = f"""
    import pytest

    @pytest.fixture(scope="session")
    def browser_type_launch_args(browser_type_launch_args):
        # Debian's Chromium, not a browser Playwright downloads.
        return {{**browser_type_launch_args, "executable_path": {str(CHROMIUM)!r}, "args": {CHROMIUM_ARGS!r}}}
"""

INI = """
    [pytest]
    uvicorn_app = apps_browser:app
    uvicorn_base_url = true
    asyncio_default_fixture_loop_scope = function
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    require_chromium()
    pytester.makepyfile(apps_browser=(APP_DIR / "apps_browser.py").read_text())
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    return pytester


def test_sync_page_goto_slash_loads_the_app(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        from playwright.sync_api import expect

        def test_home(page, base_url, uvicorn_server):
            assert base_url == uvicorn_server.base_url
            page.goto("/")
            expect(page.locator("#greeting")).to_have_text("Hello, browser!")
            expect(page.locator("#echo")).to_have_text("echo: ping from the page")
        """
    )
    result = project.runpytest_subprocess("-p", "playwright", "--browser", "chromium", "-W", "error")
    result.assert_outcomes(passed=1)


def test_async_api_uses_the_same_base_url(project: pytest.Pytester) -> None:
    project.makepyfile(
        f"""
        import pytest
        from playwright.async_api import async_playwright, expect

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_home(base_url, uvicorn_server):
            assert base_url == uvicorn_server.base_url
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path={str(CHROMIUM)!r}, args={CHROMIUM_ARGS!r})
                try:
                    page = await (await browser.new_context(base_url=base_url)).new_page()
                    await page.goto("/")
                    await expect(page.locator("#greeting")).to_have_text("Hello, browser!")
                finally:
                    await browser.close()
        """
    )
    result = project.runpytest_subprocess("-p", "anyio", "-W", "error")
    result.assert_outcomes(passed=1)


def test_without_the_option_base_url_is_left_alone(project: pytest.Pytester) -> None:
    project.makeini(INI.replace("uvicorn_base_url = true", "base_url = http://example.invalid:1"))
    project.makepyfile("def test_base_url(base_url):\n    assert base_url == 'http://example.invalid:1'\n")
    project.runpytest_subprocess().assert_outcomes(passed=1)


def test_base_url_with_a_narrower_server_scope_is_a_usage_error(project: pytest.Pytester) -> None:
    project.makeini(INI + "    uvicorn_server_scope = function\n")
    project.makepyfile("def test_nothing():\n    pass\n")
    result = project.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*uvicorn_base_url needs the session's uvicorn_server*function*"])

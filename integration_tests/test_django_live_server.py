"""``uvicorn_live_server``: pytest-django's live server over ASGI, Channels included.

Each test runs a pytest of its own (pytester, in a subprocess, configured the usual way
with ``DJANGO_SETTINGS_MODULE``) over the small project in ``django_project/``: a model,
sync and async views, a streaming response, a Channels consumer on the in-memory
channel layer, a template with a static script.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

pytestmark = pytest.mark.timeout(240)

PROJECT = Path(__file__).resolve().parent / "django_project"

INI = """
    [pytest]
    DJANGO_SETTINGS_MODULE = djproject.settings
    pythonpath = .
    asyncio_default_fixture_loop_scope = function
"""

TESTS = """
    import json
    import urllib.parse
    import urllib.request

    from websockets.sync.client import connect

    from notes.models import Note
    from notes.views import release_stream

    def get_json(url):
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)

    def test_a_sync_view_reads_the_rows_the_test_created(uvicorn_live_server):
        Note.objects.create(text="from the test")
        assert get_json(uvicorn_live_server.url("/notes/sync/")) == {"notes": ["from the test"]}

    def test_an_async_view_reads_them_too(uvicorn_live_server):
        Note.objects.bulk_create([Note(text="one"), Note(text="two")])
        assert get_json(uvicorn_live_server.url("/notes/async/")) == {"notes": ["one", "two"]}

    def test_the_test_reads_what_a_view_wrote(uvicorn_live_server):
        data = urllib.parse.urlencode({"text": "from the server"}).encode()
        with urllib.request.urlopen(uvicorn_live_server.url("/notes/add/"), data=data, timeout=30) as response:
            assert response.status == 201
        assert list(Note.objects.values_list("text", flat=True)) == ["from the server"]

    def test_each_test_starts_with_an_empty_database(uvicorn_live_server):
        assert Note.objects.count() == 0
        assert get_json(uvicorn_live_server.url("/notes/sync/")) == {"notes": []}

    def test_a_streaming_response_is_read_as_it_is_produced(uvicorn_live_server):
        release_stream.clear()
        with urllib.request.urlopen(uvicorn_live_server.url("/stream/"), timeout=30) as response:
            # The second chunk cannot exist before this test releases it: the first arrived alone.
            assert response.readline() == b"chunk 0\\n"
            release_stream.set()
            assert response.read() == b"chunk 1 (released: True)\\nchunk 2\\n"

    def test_a_channels_consumer_reads_the_database_and_uses_the_channel_layer(uvicorn_live_server):
        Note.objects.bulk_create([Note(text="a"), Note(text="b"), Note(text="c")])
        url = uvicorn_live_server.ws_url + "/ws/notes/"
        with connect(url, open_timeout=30) as first, connect(url, open_timeout=30) as second:
            first.send(json.dumps({"ask": "count"}))
            assert json.loads(first.recv(timeout=30)) == {"count": 3}
            first.send(json.dumps({"broadcast": "hello"}))
            assert json.loads(second.recv(timeout=30)) == {"broadcast": "hello"}

    def test_static_files_are_served(uvicorn_live_server):
        with urllib.request.urlopen(uvicorn_live_server.url("/static/notes/page.js"), timeout=30) as response:
            assert b"/notes/async/" in response.read()
"""

BROWSER_TEST = f"""
    from playwright.sync_api import expect, sync_playwright

    from notes.models import Note

    def test_a_page_loads_its_template_and_script_and_calls_the_api(uvicorn_live_server):
        Note.objects.bulk_create([Note(text="shown in the browser"), Note(text="second")])
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path={str(CHROMIUM)!r}, args={CHROMIUM_ARGS!r})
            try:
                page = browser.new_page()
                page.goto(uvicorn_live_server.url("/"))
                expect(page.locator("#notes li")).to_have_text(["shown in the browser", "second"], timeout=30_000)
            finally:
                browser.close()
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copytree(PROJECT, pytester.path, dirs_exist_ok=True)
    pytester.makeini(INI)
    return pytester


def test_views_database_streaming_channels_and_static_files(project: pytest.Pytester) -> None:
    project.makepyfile(test_live=TESTS)
    result = project.runpytest_subprocess("-p", "django", "-W", "error", "-p", "no:playwright")
    result.assert_outcomes(passed=7)


def test_under_xdist_each_worker_has_its_own_server_and_database(project: pytest.Pytester) -> None:
    project.makepyfile(test_live=TESTS)
    result = project.runpytest_subprocess("-p", "django", "-n", "2", "-p", "no:playwright")
    result.assert_outcomes(passed=7)


def test_a_browser_page_from_a_template(project: pytest.Pytester) -> None:
    require_chromium()
    project.makepyfile(test_page=BROWSER_TEST)
    result = project.runpytest_subprocess("-p", "django", "-p", "no:playwright")
    result.assert_outcomes(passed=1)


def test_an_app_error_in_a_view_fails_the_test_with_the_cause(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_live="""
        import urllib.error
        import urllib.request

        import pytest

        def test_posts_without_the_field(uvicorn_live_server):
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(uvicorn_live_server.url("/notes/add/"), data=b"", timeout=30)
        """
    )
    result = project.runpytest_subprocess("-p", "django", "-p", "no:playwright")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "django.utils.datastructures.MultiValueDictKeyError: 'text' in POST /notes/add/",
            "the app djproject.asgi.application raised 1 unhandled exception while serving on http://127.0.0.1:*",
        ]
    )


def test_without_pytest_django_nothing_of_it_loads(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_nothing_imported(uvicorn_server_factory):
            assert "django" not in sys.modules
            assert "uvicorn_testserver._plugin.django" not in sys.modules

        def test_uses_it(uvicorn_live_server):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:django")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*fixture 'uvicorn_live_server' not found*"])

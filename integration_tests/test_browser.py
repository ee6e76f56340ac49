"""Browser end-to-end: headless Chromium, driven by Playwright, loads a page from the harness.

Chromium is Debian's ``chromium`` package (``apt-get install chromium``; ``.ci/run``
installs it). Playwright's own browser download is not used: the browser is launched
from ``/usr/bin/chromium`` (or ``$UVICORN_TESTSERVER_CHROMIUM``). Without it the tests skip
locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from apps_browser import app
from uvicorn_testserver import ServerExceptionsError, UvicornTestServer

# Launching Chromium takes seconds, and much longer on a busy shared machine.
pytestmark = pytest.mark.timeout(240)

# Another Chromium binary can be named with this variable (the tests of the skip/fail rule use it too).
CHROMIUM = Path(os.environ.get("UVICORN_TESTSERVER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip without Chromium, except in CI, where the browser tests must run."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; in CI the browser tests must run, not skip.")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """Playwright's sync API, once per module (it cannot be started twice in one thread)."""
    require_chromium()
    with sync_playwright() as playwright:
        yield playwright


def launch(playwright: Playwright, profile: Path, *extra_args: str) -> BrowserContext:
    """Headless Debian Chromium with a fresh profile directory."""
    return playwright.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
    )


@pytest.fixture(scope="module")
def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """One headless Chromium for the module."""
    context = launch(playwright, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    try:
        yield page
    finally:
        page.close()


def test_page_shows_the_api_answer_and_the_websocket_echo(page: Page) -> None:
    with UvicornTestServer(app) as server:
        page.goto(server.url("/"))
        expect(page.locator("#greeting")).to_have_text("Hello, browser!", timeout=10_000)
        expect(page.locator("#echo")).to_have_text("echo: ping from the page", timeout=10_000)


def test_page_shows_the_status_when_the_api_raises_and_the_server_keeps_the_error(page: Page) -> None:
    with UvicornTestServer(app, raise_server_exceptions=False) as server:
        page.goto(server.url("/broken"))
        expect(page.locator("#greeting")).to_have_text("API error 500", timeout=10_000)
    assert [str(error) for error in server.errors] == ["the greeting service is down"]


def test_the_api_error_is_raised_in_the_test_when_the_server_stops(page: Page) -> None:
    server = UvicornTestServer(app).start()
    try:
        page.goto(server.url("/broken"))
        expect(page.locator("#greeting")).to_have_text("API error 500", timeout=10_000)
    finally:
        with pytest.raises(ServerExceptionsError, match=r"(?s)greeting service is down.*raised 1 unhandled exception"):
            server.stop()


def test_page_shows_websocket_failure_when_the_server_is_gone(page: Page) -> None:
    with UvicornTestServer(app) as server:
        page.goto(server.url("/"))
        expect(page.locator("#echo")).to_have_text("echo: ping from the page", timeout=10_000)
    # The server has stopped: a reload no longer reaches it.
    with pytest.raises(PlaywrightError, match=r"ERR_CONNECTION_REFUSED"):
        page.reload(timeout=10_000)


# -- HTTPS and WSS ---------------------------------------------------------------------------


def spki_pin(server: UvicornTestServer) -> str:
    """The base64 SHA-256 of the server certificate's public key, as Chromium's pin list wants it."""
    pem = ssl.get_server_certificate((server.host, server.port))
    public_key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_page_over_https_calls_the_api_and_opens_a_wss_socket(playwright: Playwright, tmp_path: Path) -> None:
    with UvicornTestServer(app, ssl=True) as server:
        # Chromium trusts this one throw-away certificate, pinned by its key, and nothing else.
        context = launch(playwright, tmp_path, f"--ignore-certificate-errors-spki-list={spki_pin(server)}")
        try:
            page = context.new_page()
            page.goto(server.url("/"))
            assert page.url.startswith("https://")
            expect(page.locator("#greeting")).to_have_text("Hello, browser!", timeout=10_000)
            expect(page.locator("#echo")).to_have_text("echo: ping from the page", timeout=10_000)
        finally:
            context.close()


def test_chromium_rejects_the_https_server_without_the_pin(page: Page) -> None:
    with (
        UvicornTestServer(app, ssl=True) as server,
        pytest.raises(PlaywrightError, match=r"ERR_CERT_AUTHORITY_INVALID"),
    ):
        page.goto(server.url("/"))


@pytest.mark.skipif(
    importlib.util.find_spec("zttp") is None, reason="zttp, through which uvicorn serves HTTP/2, is not installed"
)
def test_chromium_loads_the_page_over_http2_but_its_websocket_over_http2_fails_with_a_reason(
    playwright: Playwright, tmp_path: Path
) -> None:
    """zttp offers WebSockets over HTTP/2 (RFC 8441), which uvicorn does not serve: the page's WebSocket fails."""
    with UvicornTestServer(app, ssl=True, http2=True, log_level="info") as server:
        context = launch(playwright, tmp_path, f"--ignore-certificate-errors-spki-list={spki_pin(server)}")
        try:
            page = context.new_page()
            page.goto(server.url("/"))
            expect(page.locator("#greeting")).to_have_text("Hello, browser!", timeout=10_000)
            # The browser's side (ALPN chose h2), then the app's.
            assert page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"
            assert page.evaluate("fetch('/api/http-version').then((response) => response.text())") == "2"
            expect(page.locator("#echo")).to_have_text("WebSocket failed", timeout=10_000)
        finally:
            context.close()
    assert '"GET / HTTP/2" 200' in server.log.text
    assert '"CONNECT /ws HTTP/2" 404' in server.log.text
    assert "A client opened a WebSocket over HTTP/2 (CONNECT /ws with :protocol websocket" in server.log.text

"""`ManagedServer`: a `UvicornTestServer` started by a fixture of the pytest plugin (`uvicorn_testserver.plugin`).

Imported when a fixture first needs a server, so that loading the plugin imports no uvicorn.
"""

from __future__ import annotations

import contextlib
from typing import Any, Self

import pytest

from uvicorn_testserver._core.errors import ServerExceptionsError
from uvicorn_testserver._core.settings import AppType
from uvicorn_testserver._faces.sync_server import UvicornTestServer
from uvicorn_testserver._plugin.options import SECTION_TITLE

__all__ = ["ManagedServer"]


class ManagedServer(UvicornTestServer):
    """A server started by a plugin fixture; the plugin reports its app errors test by test."""

    whole_run = False
    section_title = SECTION_TITLE

    def __init__(self, app: AppType, **options: Any) -> None:
        super().__init__(app, **options)
        self.errors_taken = 0  # how many of `errors` a test has already been told about
        self.shared_options: dict[str, Any] | None = None  # the options of a uvicorn_server, which tests share
        self.log.traceback_elsewhere = "[{name} traceback: in the report's uvicorn server log section]"

    def start(self) -> Self:
        self.errors_taken = 0  # start() clears `errors`
        return super().start()

    def stop(self, *, shutdown_timeout: float | None = None) -> None:
        try:
            super().stop(shutdown_timeout=shutdown_timeout)
        except ServerExceptionsError:
            self.errors_taken = len(self.errors)  # raised into the test: it knows
            raise

    def stop_quietly(self, shutdown_timeout: float | None = None) -> None:
        """Stop without raising the app's errors: the plugin reports them for the test they happened in."""
        with contextlib.suppress(ServerExceptionsError):
            UvicornTestServer.stop(self, shutdown_timeout=shutdown_timeout)

    def note_app_error(self, exc: BaseException, serving: str) -> None:
        """Count `exc` as an unhandled exception of the app (one a framework turned into a 500 itself)."""
        self._core.note_app_error(exc, serving)

    def take_errors(self, test: pytest.Item) -> list[BaseException]:
        """The app errors not reported to any test yet (`test` is the one they are reported to); they count as
        reported from now on."""
        errors = self.errors
        new = errors[min(self.errors_taken, len(errors)) :]
        self.errors_taken = len(errors)
        return new

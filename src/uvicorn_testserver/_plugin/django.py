"""The Django live server (the plugin's ``uvicorn_live_server``): the project's ASGI app on a real uvicorn.

What Django's ``LiveServerTestCase`` and pytest-django's ``live_server`` arrange for their
WSGI thread, done for an ASGI server: the static files served (``ASGIStaticFilesHandler``,
when ``django.contrib.staticfiles`` is installed), the host added to ``ALLOWED_HOSTS``,
and an in-memory SQLite database shared with the server. Such a database lives in its
connection, so the server must use the test's own connection object: Django keeps one
connection per thread, and the server's code runs in other threads (a request's sync code
in asgiref's executor thread for that request, a Channels consumer's database calls in
asgiref's shared one), so the shared connections are put in place in each of them.

Imported only when the fixture is used, so loading the plugin imports no Django.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["asgi_application", "reported_view_errors", "shared_databases"]

_DISPATCH_UID = "uvicorn_testserver.shared_databases"
_ERRORS_UID = "uvicorn_testserver.reported_view_errors"


def asgi_application(use_shared: Callable[[], None]) -> Any:
    """The project's ASGI application: ``ASGI_APPLICATION`` (Channels), else Django's own; static files served."""
    from django.conf import settings
    from django.utils.module_loading import import_string

    path = getattr(settings, "ASGI_APPLICATION", None)
    if path:
        app = import_string(path)
    else:
        from django.core.asgi import get_asgi_application

        app, path = get_asgi_application(), "django.core.asgi.get_asgi_application()"
    if "django.contrib.staticfiles" in settings.INSTALLED_APPS and settings.STATIC_URL:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        app = ASGIStaticFilesHandler(app)
    return _SharedConnectionsFirst(app, use_shared, path)


class _SharedConnectionsFirst:
    """Put the shared connections in place for what runs outside a request's own thread (Channels)."""

    def __init__(self, app: Any, use_shared: Callable[[], None], name: str) -> None:
        self.app = app
        self.use_shared = use_shared
        # Messages name the project's application, not this wrapper.
        self.__module__, _, self.__qualname__ = name.rpartition(".")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            from asgiref.sync import sync_to_async

            # The thread that thread-sensitive code outside a request uses (database_sync_to_async's).
            await sync_to_async(self.use_shared, thread_sensitive=True)()
        await self.app(scope, receive, send)


@contextlib.contextmanager
def shared_databases(host: str) -> Iterator[Callable[[], None]]:
    """While serving: the test's in-memory SQLite connections in the server's threads, and `host` allowed.

    Yields the function that puts the shared connections in place in the calling thread.
    """
    from django.core.signals import request_started
    from django.db import connections
    from django.test.utils import modify_settings

    shared = {conn.alias: conn for conn in connections.all() if conn.vendor == "sqlite" and conn.is_in_memory_db()}

    def use_shared(**_: Any) -> None:
        for alias, conn in shared.items():
            connections[alias] = conn

    for conn in shared.values():
        conn.inc_thread_sharing()
    # request_started is sent in the thread that runs the request's sync code (views, middleware, the ORM).
    request_started.connect(use_shared, weak=False, dispatch_uid=_DISPATCH_UID)
    try:
        with modify_settings(ALLOWED_HOSTS={"append": host}):
            yield use_shared
    finally:
        request_started.disconnect(dispatch_uid=_DISPATCH_UID)
        for conn in shared.values():
            conn.dec_thread_sharing()


@contextlib.contextmanager
def reported_view_errors(note: Callable[[BaseException, str], None]) -> Iterator[None]:
    """Report each exception a view raised to `note`, as an app error, although Django answers it with a 500.

    Django turns a view's exception into a 500 response itself (and logs it on
    ``django.request``), so no exception reaches the ASGI server; ``got_request_exception``
    is sent while it is being handled, in the thread that handles it.
    """
    from django.core.signals import got_request_exception

    def report(request: Any = None, **_: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            note(error, f"{getattr(request, 'method', '?')} {getattr(request, 'path', '?')}")

    got_request_exception.connect(report, weak=False, dispatch_uid=_ERRORS_UID)
    try:
        yield
    finally:
        got_request_exception.disconnect(dispatch_uid=_ERRORS_UID)

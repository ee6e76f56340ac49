"""Serve WSGI apps (Flask, Django's WSGIHandler, any ``app(environ, start_response)``) through a2wsgi.

uvicorn's own ``interface="wsgi"`` uses a WSGI middleware uvicorn deprecates; the
harness intercepts that option and serves the app through ``a2wsgi`` instead (the
optional extra ``uvicorn-testserver[wsgi]``). An app *object* is also detected:

1. an ASGI 3 app is a coroutine function, or an object (or class) whose ``__call__``
   is one — never WSGI, whatever else it has;
2. an object with a callable ``wsgi_app`` attribute (Flask, Werkzeug) is WSGI;
3. any other plain callable whose signature takes exactly two positional
   parameters, ``(environ, start_response)``, is WSGI (an ASGI 2 app takes one,
   ``(scope)``, a raw ASGI 3 function three);
4. everything else, including what cannot be inspected, is left to uvicorn's
   ASGI detection.

An import string or an app factory cannot be inspected before it is loaded, so a WSGI
app given as an import string, or made by a factory (``factory=True``), needs
``interface="wsgi"``. a2wsgi runs the app in a pool of worker
threads; the harness shuts that pool down when the server stops.
"""

from __future__ import annotations

import inspect
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.importer import import_from_string

__all__ = ["WSGI_INSTALL_HINT", "WSGIAdapter", "WSGIFactory", "is_wsgi_app", "serve_app"]

WSGI_INSTALL_HINT = "pip install a2wsgi (the extra uvicorn-testserver[wsgi])"
_DEFAULT_WORKERS = 10


def is_wsgi_app(app: Any) -> bool:
    """True if `app` looks like a WSGI application (see the module docstring for the rules)."""
    if isinstance(app, str) or not callable(app):
        return False
    if _is_async_callable(app):
        return False
    if callable(getattr(app, "wsgi_app", None)):
        return True
    if inspect.isclass(app):
        return False  # a class is an ASGI 2 app (instantiated per scope), or unknown
    try:
        parameters = inspect.signature(app).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    variadic = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)
    return len(positional) == 2 and not variadic


def _is_async_callable(app: object) -> bool:
    if inspect.iscoroutinefunction(app):
        return True
    call = getattr(app, "__call__", None)  # noqa: B004 - the method itself is inspected, not callability
    return call is not None and inspect.iscoroutinefunction(call)


def _require_a2wsgi() -> Any:
    try:
        import a2wsgi
    except ImportError as exc:
        raise ImportError(
            f"serving a WSGI app needs the a2wsgi package, which is not installed: {WSGI_INSTALL_HINT}"
        ) from exc
    return a2wsgi


class WSGIAdapter:
    """An ASGI 3 app that serves `wsgi_app` through ``a2wsgi.WSGIMiddleware``.

    The middleware (and its worker threads) is created on first use and released by
    `close()`; the next use creates a new one, so a restarted server works.
    """

    def __init__(self, wsgi_app: Any, *, workers: int = _DEFAULT_WORKERS) -> None:
        self._a2wsgi = _require_a2wsgi()
        self.wsgi_app = wsgi_app
        self.workers = workers
        self._middleware: Any = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        with self._lock:
            if self._middleware is None:
                self._middleware = self._a2wsgi.WSGIMiddleware(self.wsgi_app, workers=self.workers)
            middleware = self._middleware
        await middleware(scope, receive, send)

    def close(self, timeout: float = 5.0) -> None:
        """Shut the worker threads down; wait up to `timeout` s for a request still running. Idempotent."""
        with self._lock:
            middleware, self._middleware = self._middleware, None
        if middleware is None:
            return
        executor: ThreadPoolExecutor = middleware.executor
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + timeout
        # A WSGI handler stuck in a blocking call keeps its thread; it is not waited on forever.
        for thread in list(getattr(executor, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))


class WSGIFactory:
    """An app factory for uvicorn: loads the WSGI app (import string, or factory) and wraps it in `WSGIAdapter`.

    uvicorn calls it where it loads the app (the server's thread, or the child
    process), so an import error or a failing factory is reported like any other load
    failure.
    """

    def __init__(self, source: Any, *, factory: bool) -> None:
        _require_a2wsgi()
        self.source = source
        self.factory = factory
        self.adapter: WSGIAdapter | None = None

    def __call__(self) -> WSGIAdapter:
        app = self.source
        if isinstance(app, str):
            try:
                app = import_from_string(app)
            except Exception as exc:
                raise ImportError(f"cannot import the WSGI app {self.source}: {exc}") from exc
        if self.factory:
            app = app()
        self.adapter = WSGIAdapter(app)
        return self.adapter

    def close(self, timeout: float = 5.0) -> None:
        """Shut down the worker threads of the adapter made last, if any. Idempotent."""
        if self.adapter is not None:
            self.adapter.close(timeout)


def serve_app(app: Any, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The app and uvicorn options to actually serve: WSGI apps wrapped for a2wsgi, others untouched.

    ``interface="wsgi"`` forces the wrapping; ``"auto"`` (or no interface) detects a
    WSGI app object; ``"asgi3"`` / ``"asgi2"`` never wrap. A wrapped app is served as
    ASGI 3 with WebSockets off (WSGI has none). Raises `ImportError` naming the extra to
    install if a2wsgi is missing.
    """
    interface = options.get("interface", "auto")
    if interface not in ("auto", "wsgi"):
        return app, options
    if interface == "auto" and not is_wsgi_app(app):
        return app, options
    served = dict(options)
    served["interface"] = "asgi3"
    served.setdefault("ws", "none")
    if isinstance(app, str) or options.get("factory"):
        served["factory"] = True
        return WSGIFactory(app, factory=bool(options.get("factory"))), served
    return WSGIAdapter(app), served

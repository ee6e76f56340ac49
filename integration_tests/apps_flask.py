"""WSGI apps for the WSGI tests: a small Flask app, and a bare WSGI function."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, Response, jsonify, request


def create_app(*, propagate_exceptions: bool = False) -> Flask:
    """The Flask app; with `propagate_exceptions` a view's exception leaves Flask instead of becoming its 500."""
    app = Flask("apps_flask")
    app.config["PROPAGATE_EXCEPTIONS"] = propagate_exceptions

    @app.get("/api/items")
    def items() -> Response:
        return jsonify(items=["spam", "eggs"], query=request.args.get("q"))

    @app.post("/login")
    def login() -> str:
        return f"welcome {request.form['user']}"

    @app.get("/stream")
    def stream() -> Response:
        def lines() -> Iterator[str]:
            for number in range(3):
                yield f"line {number}\n"

        return Response(lines(), mimetype="text/plain")

    @app.get("/boom")
    def boom() -> str:
        raise KeyError("flask view lost a key")

    return app


app = create_app()


def hello_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The smallest WSGI app: no framework at all."""
    body = f"plain WSGI saw {environ['REQUEST_METHOD']} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

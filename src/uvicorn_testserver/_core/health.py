"""The health check a start can wait for: one GET of ``health_path``, over TLS when the server serves HTTPS."""

from __future__ import annotations

import http.client
import time

from uvicorn_testserver._core.settings import ServerSettings, connect_host

__all__ = ["probe"]


def probe(settings: ServerSettings, port: int, path: str, deadline: float) -> tuple[int | None, str]:
    """GET `path` once; the status and what it answered, or None and the error. Blocks until `deadline` at most."""
    host, timeout = connect_host(settings.host).strip("[]"), max(0.1, deadline - time.monotonic())
    connection: http.client.HTTPConnection
    if settings.scheme == "http":
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    else:
        import ssl

        # A user's own certificate is not verified here: this checks readiness, not trust. HTTP/1.1 only, by ALPN:
        # an http2=True server would otherwise pick h2, which http.client cannot speak.
        tls = settings.tls
        if tls is not None:
            context = tls.http1_context()
        else:
            context = ssl._create_unverified_context()
            context.set_alpn_protocols(["http/1.1"])
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, f"it answered {response.status} {response.reason}"
    except (OSError, http.client.HTTPException) as exc:
        return None, repr(exc)
    finally:
        connection.close()

"""HTTPS for test servers: a throw-away certificate authority and server certificate from trustme.

``UvicornTestServer(app, ssl=True)`` makes a CA that lives as long as the server
object (so clients built once keep verifying across restarts), issues a certificate
for the loopback names (``127.0.0.1``, ``::1``, ``localhost``) and the bound host, and
writes the files uvicorn needs into a private temporary directory for each run, which
is removed when the server stops. trustme is the optional extra ``uvicorn-testserver[ssl]``.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["SSL_INSTALL_HINT", "ClientTLS", "KnownCA", "ServerTLS", "server_tls", "without_session_tickets"]

SSL_INSTALL_HINT = "pip install trustme (the extra uvicorn-testserver[ssl])"
_USER_TLS_OPTIONS = ("ssl_certfile", "ssl_keyfile", "ssl_context_factory")
_LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")


def server_tls(enabled: bool, options: dict[str, Any], host: str) -> ServerTLS | None:
    """The `ServerTLS` for ``ssl=enabled``, or None; raise `TypeError` if it clashes with user TLS options."""
    if not isinstance(enabled, bool):
        raise TypeError(f"ssl must be True or False, not {type(enabled).__name__}.")
    if not enabled:
        return None
    clashing = [name for name in _USER_TLS_OPTIONS if options.get(name)]
    if clashing:
        raise TypeError(
            f"ssl=True makes its own certificate, so it cannot be combined with {', '.join(clashing)}; "
            "pass either ssl=True or your own certificate files."
        )
    return ServerTLS(host)


def without_session_tickets(config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's own context for the throw-away certificate (its ``ssl_context_factory``), sending no TLS 1.3
    session tickets.

    A TLS 1.3 server sends its tickets just after the handshake. A client that then reads and writes its one
    ``SSLSocket`` from two threads at once, as websockets' sync client does while it sends its handshake,
    can lose its request and wait forever (python-engineio#436 is the same race). A throw-away certificate has
    no use for resumed sessions, so the harness's ``ssl=True`` sends none; certificates of the user's own are
    served as given.
    """
    context = default()
    context.num_tickets = 0
    return context


class ClientTLS(Protocol):
    """What a client needs to trust a server: its CA's file (while it serves) and a client context."""

    @property
    def ca_path(self) -> Path | None: ...

    def client_context(self) -> ssl.SSLContext: ...


class KnownCA:
    """The `ClientTLS` of a server another process runs, known by its CA file."""

    def __init__(self, ca_path: Path) -> None:
        self.ca_path = ca_path
        self._context: ssl.SSLContext | None = None

    def client_context(self) -> ssl.SSLContext:
        """A client `ssl.SSLContext` that trusts only this CA, with hostname checks on (made once)."""
        if self._context is None:
            self._context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_path))
        return self._context


class ServerTLS:
    """A server's throw-away CA and certificate; files exist only between `write_files` and `remove_files`."""

    def __init__(self, host: str) -> None:
        try:
            import trustme
        except ImportError as exc:
            raise ImportError(
                f"ssl=True needs the trustme package, which is not installed: {SSL_INSTALL_HINT}"
            ) from exc
        self._ca = trustme.CA()
        names = list(_LOOPBACK_NAMES)
        if host and host not in names and not _is_wildcard(host):
            names.append(host)
        self._cert = self._ca.issue_cert(*names)
        self._directory: Path | None = None
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        self._http1_context: ssl.SSLContext | None = None

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM-encoded."""
        pem: bytes = self._ca.cert_pem.bytes()
        return pem

    @property
    def ca_path(self) -> Path | None:
        """The CA certificate file while the files exist, else None."""
        directory = self._directory
        return directory / "ca.pem" if directory is not None else None

    def client_context(self) -> ssl.SSLContext:
        """A client `ssl.SSLContext` that trusts only this CA, with hostname checks on (made once)."""
        with self._lock:
            if self._context is None:
                self._context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem.decode())
            return self._context

    def http1_context(self) -> ssl.SSLContext:
        """A client `ssl.SSLContext` like `client_context` that offers HTTP/1.1 alone (ALPN), for the harness's
        own HTTP/1.1 clients (the health check, WebSockets, the async client); made once, never handed to users.

        httpx sets ALPN ``h2`` on the context it is given, so `client_context` shared with an HTTP/2 client
        makes an ``http2=True`` server answer any later client sharing it in HTTP/2.
        """
        with self._lock:
            if self._http1_context is None:
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem.decode())
                context.set_alpn_protocols(["http/1.1"])
                self._http1_context = context
            return self._http1_context

    def write_files(self) -> dict[str, Any]:
        """Write the CA, certificate chain and key; return uvicorn's options that serve them."""
        with self._lock:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="uvicorn-testserver-tls-"))
            directory = self._directory
        (directory / "ca.pem").write_bytes(self.ca_pem)
        (directory / "server.pem").write_bytes(b"".join(blob.bytes() for blob in self._cert.cert_chain_pems))
        key = directory / "server.key"
        key.touch(mode=0o600)
        key.write_bytes(self._cert.private_key_pem.bytes())
        return {
            "ssl_certfile": str(directory / "server.pem"),
            "ssl_keyfile": str(key),
            "ssl_context_factory": without_session_tickets,
        }

    def remove_files(self) -> None:
        """Delete the files written by `write_files`. Idempotent."""
        with self._lock:
            directory, self._directory = self._directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False

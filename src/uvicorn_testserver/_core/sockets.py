"""The listening socket every mode serves, bound by the harness so the port is race-free; and `readable`, the
wait on a descriptor that the parent side of process mode uses."""

from __future__ import annotations

import errno
import select
import socket
from typing import Protocol

from uvicorn_testserver._core.errors import (
    PortInUseError,
    ServerStartupError,
)

__all__ = ["bind_socket", "readable"]


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def readable(source: int | _HasFileno, timeout: float | None) -> bool:
    """Whether `source` (a descriptor, or what has one) has data or an end-of-file within `timeout` seconds
    (None: no limit). `poll`, not `select`: a busy test process may hold descriptors above 1024."""
    poller = select.poll()
    poller.register(source, select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))


def bind_socket(host: str, port: int, *, app_name: str, previous: int = 0) -> socket.socket:
    """Bind and listen on `host`:`port` (0 picks a free port); raise `ServerStartupError` if that fails.

    With ``port=0`` and a `previous` port, that port is tried first and a fresh one
    taken if it is gone.
    """
    ports = [previous, 0] if port == 0 and previous != 0 else [port]
    for candidate in ports:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host or None, candidate, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            raise ServerStartupError(
                f"cannot resolve host {host!r} for {app_name}: {exc}. Use an IP address such as 127.0.0.1.",
                host=host,
                port=candidate,
                app=app_name,
            ) from exc
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)  # listen at once: clients that connect early queue instead of failing
        except OSError as exc:
            sock.close()
            if candidate != port:
                continue  # the previous port is gone; take a fresh one
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"cannot serve {app_name} on {host}:{candidate}: the port is already in use. "
                    "Pass port=0 to get a free port, or stop whatever listens there.",
                    host=host,
                    port=candidate,
                    app=app_name,
                    elapsed=0.0,
                ) from exc
            raise ServerStartupError(
                f"cannot bind {host}:{candidate} for {app_name}: {exc}.",
                host=host,
                port=candidate,
                app=app_name,
                elapsed=0.0,
            ) from exc
        return sock
    raise AssertionError("unreachable: the last candidate port is the requested one")

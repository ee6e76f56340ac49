"""What the harness changes in uvicorn's HTTP protocols, by subclassing them: access lines always written (the
per-server log capture needs them), and how a TLS connection that is done closing is told apart."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["closed_tls", "with_access_log"]

_access_logged: dict[type[asyncio.Protocol], type[asyncio.Protocol]] = {}


def with_access_log(protocol_class: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """`protocol_class`, writing access lines whatever handlers the process has (one subclass per class).

    uvicorn's HTTP protocols log requests only if ``uvicorn.access`` ``hasHandlers()``
    when a connection opens; the per-server capture needs the records even in a process
    without logging configured, and adding a handler would change that configuration.
    """
    subclass = _access_logged.get(protocol_class)
    if subclass is None:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            protocol_class.__init__(self, *args, **kwargs)
            self.access_log = True

        namespace: dict[str, Any] = {"__init__": __init__, "__module__": __name__}
        if hasattr(protocol_class, "_switch"):  # http2=True: zttp's dispatcher, which makes the real protocol

            def _switch(self: Any, http2: bool, initial_data: bytes = b"") -> None:
                protocol_class._switch(self, http2)
                protocol = self.transport.get_protocol()  # the one it made, before it reads a request
                protocol.access_log = True
                if initial_data:
                    protocol.data_received(initial_data)

            namespace["_switch"] = _switch
        subclass = _access_logged.setdefault(
            protocol_class, type(protocol_class.__name__, (protocol_class,), namespace)
        )
    return subclass


def closed_tls(transport: Any) -> bool:
    """True for a TLS transport that is closing with nothing left to send."""
    if transport is None or not transport.is_closing():
        return False
    try:
        return transport.get_extra_info("sslcontext") is not None and transport.get_write_buffer_size() == 0
    except AttributeError:
        # asyncio's TLS transport drops its protocol when close() is called twice: it is done.
        return True

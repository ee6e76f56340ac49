"""The uvicorn releases the harness supports, and the error for one it does not."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version
from importlib.util import find_spec

__all__ = ["http2_unavailable", "unsupported_uvicorn"]


def unsupported_uvicorn(exc: ImportError) -> str:
    """Why importing uvicorn's internals failed: the installed release, the supported range, what to install."""
    wanted = _wanted_uvicorn()
    return (
        f"uvicorn-testserver needs {wanted!r}, and {_installed_uvicorn()} ({exc}). Install a supported release: "
        f"pip install {wanted!r}."
    )


def http2_unavailable() -> str | None:
    """Why ``http2=True`` cannot be served here, and what to install; None if it can.

    uvicorn serves HTTP/2 from 0.53 on, through the zttp package, which it does not require.
    """
    try:  # the protocol that hands each connection to HTTP/1.1 or HTTP/2: the feature itself
        dispatcher = find_spec("uvicorn.protocols.http.auto_zttp_impl")
    except ImportError:  # uvicorn itself is missing
        dispatcher = None
    has_zttp = find_spec("zttp") is not None
    if dispatcher is not None and has_zttp:
        return None
    if dispatcher is None:
        wanted = _wanted_uvicorn()
        return (
            f"http2=True needs uvicorn 0.53 or later, which serves HTTP/2 through zttp, and {_installed_uvicorn()}: "
            f"pip install {wanted!r} zttp (the extra uvicorn-testserver[http2])."
        )
    return (
        "http2=True needs the zttp package, through which uvicorn serves HTTP/2, and it is not installed: "
        "pip install zttp (the extra uvicorn-testserver[http2])."
    )


def _wanted_uvicorn() -> str:
    return next((req for req in requires("uvicorn-testserver") or [] if req.startswith("uvicorn")), "uvicorn")


def _installed_uvicorn() -> str:
    try:
        return f"uvicorn {version('uvicorn')} is installed"
    except PackageNotFoundError:
        return "uvicorn is not installed"

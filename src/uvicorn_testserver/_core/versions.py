"""The uvicorn releases the harness supports, and the error for one it does not."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version
from importlib.util import find_spec

__all__ = ["HTTP2_INSTALL_HINT", "http2_unavailable", "unsupported_uvicorn"]

HTTP2_INSTALL_HINT = "pip install 'uvicorn>=0.54' zttp (the extra uvicorn-testserver[http2])"


def unsupported_uvicorn(exc: ImportError) -> str:
    """Why importing uvicorn's internals failed: the installed release, the supported range, what to install."""
    wanted = next((req for req in requires("uvicorn-testserver") or [] if req.startswith("uvicorn")), "uvicorn")
    return (
        f"uvicorn-testserver needs {wanted!r}, and {_installed_uvicorn()} ({exc}). Install a supported release: "
        f"pip install {wanted!r}."
    )


def http2_unavailable() -> str | None:
    """Why ``http2=True`` cannot be served here (uvicorn before 0.54, or no zttp), or None if it can."""
    missing = []
    # uvicorn 0.54 added HTTP/2, through zttp: its dispatching protocol is the feature to look for.
    try:
        dispatcher = find_spec("uvicorn.protocols.http.auto_zttp_impl")
    except ImportError:  # uvicorn itself is missing
        dispatcher = None
    if dispatcher is None:
        missing.append(f"uvicorn 0.54 or later ({_installed_uvicorn()})")
    if find_spec("zttp") is None:
        missing.append("the zttp package (not installed)")
    if not missing:
        return None
    return f"http2=True needs {' and '.join(missing)}: {HTTP2_INSTALL_HINT}."


def _installed_uvicorn() -> str:
    try:
        return f"uvicorn {version('uvicorn')} is installed"
    except PackageNotFoundError:
        return "uvicorn is not installed"

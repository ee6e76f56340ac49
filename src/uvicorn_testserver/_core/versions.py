"""The uvicorn releases the harness supports, and the error for one it does not."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires, version

__all__ = ["unsupported_uvicorn"]


def unsupported_uvicorn(exc: ImportError) -> str:
    """Why importing uvicorn's internals failed: the installed release, the supported range, what to install."""
    try:
        installed = f"uvicorn {version('uvicorn')} is installed"
    except PackageNotFoundError:
        installed = "uvicorn is not installed"
    wanted = next((req for req in requires("uvicorn-testserver") or [] if req.startswith("uvicorn")), "uvicorn")
    return (
        f"uvicorn-testserver needs {wanted!r}, and {installed} ({exc}). Install a supported release: "
        f"pip install {wanted!r}."
    )

"""uvicorn-testserver: run a real uvicorn server in your tests.

>>> from uvicorn_testserver import UvicornTestServer
>>> with UvicornTestServer("uvicorn_testserver.demo:app") as server:  # doctest: +SKIP
...     requests.get(server.url("/health")).json()
{'message': 'OK'}
"""

from importlib import import_module as _import_module
from importlib.metadata import version as _version
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from uvicorn_testserver._core.errors import (
    ClientTimeoutError,
    InFlightWarning,
    InvalidResponseTypeError,
    PortInUseError,
    ServerError,
    ServerExceptionsError,
    ServerShutdownError,
    ServerStartupError,
    ServerStateError,
    WebSocketClosedError,
)
from uvicorn_testserver._core.logs import ServerLog
from uvicorn_testserver._core.options import AsyncServerOptions, ServerOptions, UvicornOptions
from uvicorn_testserver._core.settings import LogLevel, ServerURL

if _TYPE_CHECKING:
    from uvicorn_testserver._client.client import AsyncTestClient
    from uvicorn_testserver._client.response import AsyncTestResponse
    from uvicorn_testserver._client.streaming import AsyncTestStream, EventStream, ServerSentEvent
    from uvicorn_testserver._client.websocket import WebSocketConfig, WebSocketHelper
    from uvicorn_testserver._faces.async_server import AsyncServerMode, AsyncTestServer, create_test_server
    from uvicorn_testserver._faces.sync_server import ProcessServer, UvicornTestServer
    from uvicorn_testserver._plugin.shared_server import SharedServer
    from uvicorn_testserver._runners.process import ChildAppError


# The servers load on first use: the sync face imports uvicorn, the async API aiohttp and anyio
# (about 0.3 s), and the pytest plugin, loaded in every run, imports this package.
_LAZY = {
    "ProcessServer": "_faces.sync_server",
    "UvicornTestServer": "_faces.sync_server",
    "AsyncServerMode": "_faces.async_server",
    "AsyncTestClient": "_client.client",
    "AsyncTestResponse": "_client.response",
    "AsyncTestServer": "_faces.async_server",
    "AsyncTestStream": "_client.streaming",
    "ChildAppError": "_runners.process",
    "EventStream": "_client.streaming",
    "ServerSentEvent": "_client.streaming",
    "SharedServer": "_plugin.shared_server",
    "WebSocketConfig": "_client.websocket",
    "WebSocketHelper": "_client.websocket",
    "create_test_server": "_faces.async_server",
}


def _public(value: _Any) -> _Any:
    """Report a public class as ``uvicorn_testserver.X`` (in tracebacks and reprs), as httpx does."""
    if isinstance(value, type) and value.__module__.startswith(f"{__name__}._"):
        value.__module__ = __name__
    return value


def __getattr__(name: str) -> _Any:
    if name == "__version__":  # read from the installed metadata on first use, not at every import
        value = globals()["__version__"] = _version("uvicorn-testserver")
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = _public(getattr(_import_module(f"{__name__}.{module}"), name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


__all__ = [
    "AsyncServerMode",
    "AsyncServerOptions",
    "AsyncTestClient",
    "AsyncTestResponse",
    "AsyncTestServer",
    "AsyncTestStream",
    "ChildAppError",
    "ClientTimeoutError",
    "EventStream",
    "InFlightWarning",
    "InvalidResponseTypeError",
    "LogLevel",
    "PortInUseError",
    "ProcessServer",
    "ServerError",
    "ServerExceptionsError",
    "ServerLog",
    "ServerOptions",
    "ServerSentEvent",
    "ServerShutdownError",
    "ServerStartupError",
    "ServerStateError",
    "ServerURL",
    "SharedServer",
    "UvicornOptions",
    "UvicornTestServer",
    "WebSocketClosedError",
    "WebSocketConfig",
    "WebSocketHelper",
    "__version__",
    "create_test_server",
]

for _name in __all__:
    if _name in globals():
        _public(globals()[_name])

del _name

"""uvicorn-testserver: run a real uvicorn server in your tests.

>>> from uvicorn_testserver import UvicornTestServer
>>> with UvicornTestServer("uvicorn_testserver.demo:app") as server:  # doctest: +SKIP
...     requests.get(server.url("/health")).json()
{'message': 'OK'}
"""

from importlib.metadata import version as _version

from uvicorn_testserver._errors import (
    PortInUseError,
    ServerError,
    ServerExceptionsError,
    ServerShutdownError,
    ServerStartupError,
    ServerStateError,
)
from uvicorn_testserver._logs import ServerLog
from uvicorn_testserver._server import LogLevel, UvicornTestServer

__version__ = _version("uvicorn-testserver")

__all__ = [
    "LogLevel",
    "PortInUseError",
    "ServerError",
    "ServerExceptionsError",
    "ServerLog",
    "ServerShutdownError",
    "ServerStartupError",
    "ServerStateError",
    "UvicornTestServer",
    "__version__",
]

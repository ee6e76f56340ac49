"""A WebSocket implementation written for a `websockets` release that is not installed.

Passed as ``ws="broken_ws_impl:Protocol"``, it reproduces a websockets/uvicorn version
skew for real: uvicorn's ``Config.load()`` imports it and gets an `ImportError`.
"""

from websockets import ServerProtocolFromTheFuture  # type: ignore[attr-defined]  # does not exist, on purpose

Protocol = ServerProtocolFromTheFuture

"""Microservices for the many-servers tests: each one can call the next through its base URL.

`service_app(index, peers)` builds service number `index`. `peers` is filled by the
test once every server has started (their ports are only known then), so a service
looks its neighbours up per request:

* ``GET /chain`` calls ``/chain`` on service ``index + 1`` and appends its own index;
  the last service starts the list. A call to service 0 walks the whole chain.
* ``GET /fanout`` calls ``/whoami`` on every other service at once and returns the sum.
* ``GET /whoami`` answers the index.

Each service opens one `httpx.AsyncClient` in its lifespan and closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# Building an httpx client loads the CA bundle (~40 ms); the services share one TLS context.
_TLS = ssl.create_default_context()


def service_app(index: int, peers: list[str]) -> Starlette:
    """Service `index`; `peers[i]` is the base URL of service i (filled in after start)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=30, verify=_TLS) as client:
            app.state.client = client
            yield

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"index": index})

    async def chain(request: Request) -> JSONResponse:
        if index + 1 == len(peers):
            return JSONResponse({"path": [index]})
        client: httpx.AsyncClient = request.app.state.client
        downstream = (await client.get(f"{peers[index + 1]}/chain")).raise_for_status().json()
        return JSONResponse({"path": [index, *downstream["path"]]})

    async def fanout(request: Request) -> JSONResponse:
        client: httpx.AsyncClient = request.app.state.client
        others = [url for i, url in enumerate(peers) if i != index]
        answers = await asyncio.gather(*(client.get(f"{url}/whoami") for url in others))
        return JSONResponse({"calls": len(answers), "sum": sum(a.raise_for_status().json()["index"] for a in answers)})

    return Starlette(
        routes=[Route("/whoami", whoami), Route("/chain", chain), Route("/fanout", fanout)], lifespan=lifespan
    )

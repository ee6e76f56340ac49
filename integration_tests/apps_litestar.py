"""A Litestar app for the framework tests: typed JSON handlers, lifespan state, a WebSocket."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from litestar import Litestar, get, post, websocket_listener
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody


@dataclass
class Book:
    title: str
    year: int


@get("/books")
async def list_books(state: State) -> list[Book]:
    books: list[Book] = state.books
    return books


@post("/books")
async def add_book(data: JSONBody[Book], state: State) -> Book:
    state.books.append(data)
    return data


@get("/books/{index:int}")
async def get_book(index: FromPath[int], state: State) -> Book:
    books: list[Book] = state.books
    if not 0 <= index < len(books):
        raise NotFoundException(f"no book {index}")
    return books[index]


@get("/crash")
async def crash() -> str:
    raise KeyError("litestar handler lost a key")


@websocket_listener("/reverse")
async def reverse(data: str) -> str:
    return data[::-1]


@contextlib.asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    app.state.books = [Book("Dune", 1965)]
    yield


def create_app() -> Litestar:
    return Litestar(route_handlers=[list_books, add_book, get_book, crash, reverse], lifespan=[lifespan])

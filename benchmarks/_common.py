"""Shared pieces of the benchmarks: the naive pattern they compare against, statistics, output."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import uvicorn

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def export_src(revision: str, into: Path) -> Path:
    """Another git revision's ``src/``, exported into `into` (no checkout is touched); its path."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "src"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def free_port() -> int:
    """The find-then-bind pattern the naive recipes use (racy; fine for a benchmark)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def naive_thread_server(app: Any, port: int | None = None, **options: Any) -> Iterator[str]:
    """The pasted recipe: uvicorn.Server in a thread, poll `started`, `should_exit`, join."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.001)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def sample(fn: Callable[[], object], count: int) -> list[float]:
    """Run `fn` `count` times; return each duration in seconds."""
    durations = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        durations.append(time.perf_counter() - start)
    return durations


def loop_mode_cycles(loop: asyncio.AbstractEventLoop, app: Any, count: int) -> list[float]:
    """`count` start+stop cycles of ``AsyncTestServer(app, mode="loop")`` on `loop`; each duration in seconds."""
    from uvicorn_testserver import AsyncTestServer

    async def run() -> list[float]:
        durations = []
        for _ in range(count):
            start = time.perf_counter()
            async with AsyncTestServer(app, mode="loop"):
                pass
            durations.append(time.perf_counter() - start)
        return durations

    return loop.run_until_complete(run())


def summary(durations: Sequence[float]) -> dict[str, float]:
    ordered = sorted(durations)
    return {
        "runs": len(ordered),
        "median_ms": statistics.median(ordered) * 1000,
        "p10_ms": ordered[len(ordered) // 10] * 1000,
        "p90_ms": ordered[(len(ordered) * 9) // 10] * 1000,
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a Markdown table (paste-able into the README)."""
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(f"{cell:.2f}" if isinstance(cell, float) else str(cell) for cell in row) + " |")


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = {"python": platform.python_version(), "uvicorn": uvicorn.__version__, **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


class Worker:
    """A Python process of its own that answers each line it is sent with a JSON list of cycle durations (s)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        )

    def ask(self, line: str) -> list[float]:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        durations: list[float] = json.loads(stdout.readline())
        return durations

    def close(self) -> None:
        stdin: IO[str] | None = self.process.stdin
        if stdin is not None:
            stdin.close()
        self.process.wait(60)

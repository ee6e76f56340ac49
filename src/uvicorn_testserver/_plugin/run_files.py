"""The directory through which the pytest processes of a run and its keeper share one server.

Every pytest process of the run (the xdist controller and each worker) and the keeper
process read and write files in one directory named after the run, under a lock
(`filelock`) where it matters:

* ``users/<pid>``: one file per pytest process of the run, from its start to its end.
  The keeper stops the server and exits once no such process is alive, so a worker
  that crashes or is killed does not keep it running, and nothing outlives the run.
* ``running/<pid>``: the test a pytest process is running now, for attribution.
* ``spec.json``: what to serve (written by the first worker that needs the server, which
  then starts the keeper); ``server.json``: where it serves, once it is ready;
  ``failed.json``: why it could not start; ``keeper.out``: the keeper's output.
* ``control.sock``: a Unix socket on which the keeper answers ``settle`` once the server
  has finished the step it was in, and ``in_flight`` with what it handles now.
* ``log.jsonl``: the server's log records; ``errors.jsonl``: the app's unhandled
  exceptions, each with the tests that were running on any worker when it happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

__all__ = [
    "POLL",
    "alive",
    "ask_keeper",
    "live_users",
    "read_json",
    "read_jsonl",
    "running_tests",
    "tail",
    "write_atomically",
]

POLL = 0.05  # how often the keeper looks for live users, and a worker for the keeper's answer


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, which has exited but is not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill()


def live_users(directory: Path) -> list[int]:
    """The pytest processes of the run that are still alive."""
    users = []
    for entry in directory.joinpath("users").glob("*"):
        with contextlib.suppress(ValueError):
            if alive(int(entry.name)):
                users.append(int(entry.name))
    return users


def running_tests(directory: Path) -> list[str]:
    """The tests running now on any pytest process of the run."""
    tests = []
    for entry in directory.joinpath("running").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            if alive(int(entry.name)):
                tests.append(entry.read_text())
    return sorted(tests)


def ask_keeper(directory: Path, request: str, timeout: float = 5.0) -> Any:
    """Send `request` on the keeper's control socket; its JSON answer, or None if it did not answer."""
    with contextlib.suppress(OSError, ValueError), socket.socket(socket.AF_UNIX) as control:
        control.settimeout(timeout)
        control.connect(str(directory / "control.sock"))
        control.sendall(request.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = control.recv(65536)
            if not chunk:
                break
            answer += chunk
        return json.loads(answer)
    return None


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def read_jsonl(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of `path` from `offset` on, and the offset after them."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except OSError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    entries = []
    for line in complete.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries, offset + len(complete)


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""

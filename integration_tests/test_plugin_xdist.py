"""The pytest plugin under pytest-xdist: every worker its own servers, no fixed ports, no collisions."""

from __future__ import annotations

import itertools
import json

import pytest

APP = """
    import os

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def whoami(request):
        return JSONResponse({"port": request.scope["server"][1], "pid": os.getpid()})

    app = Starlette(routes=[Route("/whoami", whoami)])
"""

CONFTEST = """
    import json
    import os
    import time

    import pytest

    @pytest.fixture
    def record(pytestconfig, request):
        # One file per worker process: nothing is shared between workers.
        path = pytestconfig.rootpath / "records" / f"{os.getpid()}.jsonl"
        path.parent.mkdir(exist_ok=True)
        started = time.time()
        entries = []
        yield entries.append
        ended = time.time()
        with path.open("a") as file:
            for kind, port in entries:
                entry = {"test": request.node.nodeid, "pid": os.getpid(), "kind": kind, "port": port,
                         "start": started, "end": ended}
                file.write(json.dumps(entry) + "\\n")
"""

TESTS = """
    import os

    import pytest
    import requests

    @pytest.mark.parametrize("n", range(60))
    def test_fresh_server(n, fresh_uvicorn_server, uvicorn_server, record):
        for kind, server in (("fresh", fresh_uvicorn_server), ("session", uvicorn_server)):
            answer = requests.get(server.url("/whoami"), timeout=30).json()
            # The request reached this test's own server, in this worker.
            assert answer == {"port": server.port, "pid": os.getpid()}
            record((kind, server.port))
"""


@pytest.mark.timeout(300)  # a pytest run with two workers, each importing everything, on a 2-core machine
def test_fresh_servers_never_collide_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nuvicorn_app = myapp:app\n")
    pytester.makepyfile(myapp=APP, test_many=TESTS)
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=60)
    result.stdout.fnmatch_lines(["*2 workers [[]60 items[]]*"])

    records = [
        json.loads(line) for path in (pytester.path / "records").iterdir() for line in path.read_text().splitlines()
    ]
    fresh = [entry for entry in records if entry["kind"] == "fresh"]
    session = [entry for entry in records if entry["kind"] == "session"]
    assert len(fresh) == len(session) == 60
    workers = {entry["pid"] for entry in records}
    assert len(workers) == 2, "both workers ran tests"
    # Each worker has exactly one session server of its own.
    session_ports = {pid: {entry["port"] for entry in session if entry["pid"] == pid} for pid in workers}
    assert all(len(ports) == 1 for ports in session_ports.values()), session_ports
    # No port was used by two servers at the same time, in the same worker or across workers.
    all_session_ports = set().union(*session_ports.values())
    assert len(all_session_ports) == 2
    assert not [entry for entry in fresh if entry["port"] in all_session_ports]
    for first, second in itertools.combinations(fresh, 2):
        if first["port"] == second["port"]:
            overlap = first["start"] < second["end"] and second["start"] < first["end"]
            assert not overlap, f"port {first['port']} served {first['test']} and {second['test']} at once"

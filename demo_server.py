"""Serve the demo app through UvicornTestServer, to try the harness by hand.

    uv run --no-dev python demo_server.py             # http://127.0.0.1:8000
    uv run --no-dev python demo_server.py --port 0    # a free port

(``--no-dev``: the demo needs only the runtime dependencies, not the test tools.)

Stops cleanly on Ctrl-C or SIGTERM (exit code 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from uvicorn_testserver import PortInUseError, ServerError, UvicornTestServer
from uvicorn_testserver.demo import app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the uvicorn-testserver demo app.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port, 0 for a free one (default: %(default)s)")
    args = parser.parse_args(argv)

    # This script is the application, so it may configure logging (the library never does).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Wait for Ctrl-C / SIGTERM with sigwait rather than a handler: a handler that sets a
    # threading.Event deadlocks when a second signal lands inside the first (Ctrl-C reaches
    # both `uv run` and this process, and uv forwards it once more). Blocked here, before the
    # server thread starts, the signals are queued for the main thread alone.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    # A person pressing Ctrl-C wants it to stop now: an open stream (curl -N .../events) is cut after 0.5 s.
    server = UvicornTestServer(app, args.host, args.port, log_level="info", health_path="/health", shutdown_timeout=0.5)
    try:
        server.start()
    except PortInUseError:
        print(
            f"error: cannot serve on {args.host}:{args.port}: the port is already in use. Run with --port 0 for a "
            "free port, or stop whatever listens there.",
            file=sys.stderr,
        )
        return 2
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    base = server.base_url
    print(
        f"Demo app running at {base}  (Ctrl-C to stop)\n\n"
        "Try it:\n"
        f"  curl {base}/health\n"
        f"  curl {base}/test\n"
        f"  curl -X POST -H 'Content-Type: application/json' -d '{{\"hello\": \"world\"}}' {base}/api/data\n"
        f"  curl -N '{base}/events?count=3'\n"
        f"  uv run --no-dev python -m websockets {server.ws_url}/ws/echo\n",
        flush=True,
    )
    signal.sigwait(stop_signals)
    print("Stopping...", flush=True)
    server.stop()
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

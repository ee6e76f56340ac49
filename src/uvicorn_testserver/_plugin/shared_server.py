"""`SharedServer`: the run's shared server (``uvicorn_server_scope = run``) as one pytest process sees it.

The server runs in the run's keeper process (`keeper`); this face reads what the keeper
writes in the run's directory (`run_files`) and asks it over its control socket, so the
accessors are those of every other face (`LiveServer`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uvicorn_testserver._core.app_errors import InFlight
from uvicorn_testserver._core.errors import InFlightWarning, ServerStateError
from uvicorn_testserver._core.logs import ServerLog, record_from_fields
from uvicorn_testserver._core.run import AnyRun
from uvicorn_testserver._core.settings import ServerSettings
from uvicorn_testserver._core.tls import KnownCA
from uvicorn_testserver._faces.live import LiveServer
from uvicorn_testserver._plugin.attribution import warn_at
from uvicorn_testserver._plugin.options import SHARED_TITLE
from uvicorn_testserver._plugin.run_files import alive, ask_keeper, read_jsonl
from uvicorn_testserver._runners.process import ChildAppError

if TYPE_CHECKING:
    import pytest

__all__ = ["SharedServer", "SharedView"]


class SharedView:
    """The run's server as this pytest process sees it: what `LiveServer`'s accessors read.

    `errors` and `log` hold what the server did for every worker's requests since this
    process attached, read from the run's files as the keeper writes them.
    """

    last_run: AnyRun | None = None  # no run of this process serves it

    def __init__(self, directory: Path, settings: ServerSettings, info: dict[str, Any]) -> None:
        self.directory = directory
        self.settings = settings
        self.log = ServerLog()
        self.log.traceback_elsewhere = "[{name} traceback: in the report's uvicorn server log section]"
        self._app_errors: list[BaseException] = []
        self.info = info
        self._served: dict[int, tuple[str, list[str]]] = {}  # id(error) -> (what it served, tests then running)
        self._log_offset = _size(directory / "log.jsonl")
        self._errors_offset = _size(directory / "errors.jsonl")
        ca_path = info.get("ca_path")
        self._tls = KnownCA(Path(ca_path)) if ca_path else None

    @property
    def port(self) -> int:
        return int(self.info["port"])

    @property
    def scheme(self) -> str:
        return str(self.info["scheme"])

    @property
    def client_tls(self) -> KnownCA | None:
        return self._tls

    def where(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def bind(self) -> int:
        return self.port  # bound by the keeper, for the whole run

    @property
    def is_running(self) -> bool:
        return alive(int(self.info["keeper"])) and self.directory.joinpath("server.json").exists()

    @property
    def app_errors(self) -> list[BaseException]:
        """The errors read so far (reading first what the keeper has written since)."""
        self.read()
        return self._app_errors

    @property
    def errors(self) -> list[BaseException]:
        self.settle()
        return list(self._app_errors)

    def settle(self) -> None:
        """Wait (at most 5 s) until the keeper's server finished the step it is in, then read what it wrote."""
        ask_keeper(self.directory, "settle")
        self.read()

    def read(self) -> None:
        """Take in the log records and app errors the keeper has written since the last read."""
        records, self._log_offset = read_jsonl(self.directory / "log.jsonl", self._log_offset)
        for fields in records:
            self.log.append(record_from_fields(fields))
        entries, self._errors_offset = read_jsonl(self.directory / "errors.jsonl", self._errors_offset)
        for entry in entries:
            error = ChildAppError.from_event(entry)
            self._served[id(error)] = (str(entry["serving"]), list(entry["running"]))
            self._app_errors.append(error)

    def in_flight(self) -> list[InFlight]:
        now = time.monotonic()
        answer = ask_keeper(self.directory, "in_flight") or []
        return [InFlight(entry["method"], entry["path"], now - float(entry["running"])) for entry in answer]

    def served_when_raised(self, error: BaseException) -> str:
        return self._served.get(id(error), ("", []))[0]

    def running_when_raised(self, error: BaseException) -> list[str]:
        """The tests running on any worker when the app raised `error`."""
        return self._served.get(id(error), ("", []))[1]


class SharedServer(LiveServer):
    """``uvicorn_server`` with ``uvicorn_server_scope = run``: the one server every pytest-xdist worker shares.

    The same accessors as `UvicornTestServer` (``url``, ``base_url``, ``ssl_context``,
    ``errors``, ``log``, ``expect_errors``, ``wait_idle``, ``in_flight``, ...), and the
    same error types. It runs in a process of its own for the whole run: `pid` is the
    process that serves the app, and the run starts and stops it, so this face has no
    ``start``/``stop``. Across workers:

    * ``errors`` and ``log`` hold what the server did since this worker attached, for
      *every* worker's requests; the plugin still fails only the test that caused an
      error (the one test running anywhere when it happened).
    * ``wait_idle`` and ``in_flight`` see every worker's requests, so on a busy run
      ``wait_idle`` waits for the whole server to be idle.
    * ``expect_errors`` takes the errors of its types raised while the block ran, which
      may include another worker's at the same moment.
    * ``output`` and ``returncode`` are the keeper's concern: they raise `ServerStateError`.
    """

    whole_run = True  # in flight and errors span the run's workers
    section_title = SHARED_TITLE

    def __init__(self, view: SharedView, options: dict[str, Any]) -> None:
        self._core = view
        self._view = view
        self.shared_options: dict[str, Any] | None = options

    @property
    def mode(self) -> str:
        """``"run"``: the server is the run's, in a process of its own."""
        return "run"

    @property
    def pid(self) -> int:
        """The id of the process that serves the app."""
        return int(self._view.info["pid"])

    @property
    def output(self) -> str:
        """Not available here: the run's keeper process holds the server's output."""
        raise ServerStateError(f"{self!r} has no output: the run's keeper process holds it.")

    @property
    def returncode(self) -> int | None:
        """Not available here: the server's process belongs to the run's keeper."""
        raise ServerStateError(f"{self!r} has no returncode: its process belongs to the run's keeper.")

    @property
    def log(self) -> ServerLog:
        """The records the server emitted since this worker attached, for every worker's requests."""
        self._view.read()
        return self._view.log

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Block until the server handles no request or WebSocket of any worker (see the class docstring)."""
        for pause in self._until_idle(timeout):
            time.sleep(pause)

    def take_errors(self, test: pytest.Item) -> list[BaseException]:
        """The app errors `test` caused (it was the one test running anywhere), taken out of `errors`; warn at
        `test` about those it may have caused along with tests on other workers, which fail none of them."""
        self._view.settle()
        mine: list[BaseException] = []
        errors = self._view.app_errors
        for error in list(errors):
            running = self._view.running_when_raised(error)
            if test.nodeid not in running:
                continue
            errors.remove(error)
            others = [name for name in running if name != test.nodeid]
            if not others:
                mine.append(error)
                continue
            assert isinstance(error, ChildAppError)
            warn_at(
                test,
                InFlightWarning(
                    f"The run's shared server raised {error.type_name}: {error.message} in "
                    f"{self.served_when_raised(error)} while {test.nodeid} and {len(others)} test(s) on other "
                    f"workers were running ({', '.join(others)}); it cannot tell which one caused it, so none of "
                    "them fails for it."
                ),
            )
        return mine

    def __repr__(self) -> str:
        return f"<SharedServer app={self.app!r} {self._view.where()} pid={self.pid} (the run's)>"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0

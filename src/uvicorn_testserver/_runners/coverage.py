"""Coverage of a process-mode child, with the test process's own coverage configuration.

When the test process measures coverage (pytest-cov, or ``coverage run``), the parent
hands its child the serialized configuration and a data file of its own; the child
measures from before it imports the app until it ends, and the parent merges that file
into its running measurement, so the lines the app ran in the child count in the usual
report. Without coverage running, nothing here imports it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

from uvicorn_testserver._core.logs import harness_logger

__all__ = ["ChildCoverage", "start_in_child"]

# How `coverage.Coverage(config_file=...)` takes a serialized configuration (coverage.control.CONFIG_DATA_PREFIX).
_CONFIG_DATA_PREFIX = ":data:"


class ChildCoverage:
    """The parent's side: what to ask the child for, and merging its data once it has ended."""

    def __init__(self, coverage: Any, directory: str) -> None:
        self._coverage = coverage
        self._directory = directory
        self.data_file = os.path.join(directory, "child.coverage")

    @classmethod
    def if_measuring(cls) -> ChildCoverage | None:
        """A `ChildCoverage` if this process runs under coverage (one that can hand over its config), else None."""
        if "coverage" not in sys.modules:
            return None
        import coverage

        current = coverage.Coverage.current()
        if current is None or not hasattr(current.config, "serialize"):  # serialize(): coverage 7.10.3 and later
            return None
        return cls(current, tempfile.mkdtemp(prefix="uvicorn-testserver-coverage-"))

    def request(self) -> str:
        """The child's configuration: this process's, writing to a data file of the child's own."""
        from coverage.config import CoverageConfig

        config = CoverageConfig.deserialize(self._coverage.config.serialize())
        config.data_file = self.data_file
        config.parallel = False  # one child, one file, merged by the parent
        config.patch = []  # the child starts no processes of its own to measure
        return str(config.serialize())

    def finish(self, *, merge: bool) -> None:
        """Add what the child measured to this process's data (if `merge`: it has ended), then remove its file."""
        try:
            if merge and os.path.exists(self.data_file):
                self._merge()
        except Exception as exc:  # noqa: BLE001 - a failed merge must not fail the test; it is said in the log
            harness_logger.warning("Could not merge the child process's coverage data: %r", exc)
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)

    def _merge(self) -> None:
        import coverage
        from coverage.exceptions import CoverageWarning

        measured = coverage.CoverageData(basename=self.data_file)
        measured.read()
        with warnings.catch_warnings():
            # get_data() checks for data and imported sources as if the run had ended; it has not.
            warnings.simplefilter("ignore", CoverageWarning)
            self._coverage.get_data().update(measured)
        if measured.measured_files():
            # The app's modules were imported in the child, not here: no "module was never imported" at the end
            # (pytest-cov does the same on its xdist workers).
            self._coverage._warn_unimported_source = False


def start_in_child(request: str) -> Callable[[], None]:
    """Start measuring in the child as `request` says; return what stops and saves the data at the end."""
    import coverage

    measuring = coverage.Coverage(config_file=_CONFIG_DATA_PREFIX + request)
    measuring.start()

    def save() -> None:
        measuring.stop()
        measuring.save()

    return save

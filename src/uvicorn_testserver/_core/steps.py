"""The waits of a start or stop, written once as generators of these steps (`ServerCore.start_steps`,
`stop_steps`); a driver performs each, by blocking or by awaiting on the caller's loop."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

__all__ = ["Pause", "Probe", "Step", "Steps", "WaitEnded", "WaitReady"]


@dataclass(frozen=True)
class WaitReady:
    """Until the run is ready: True, False at `timeout`, or `StartupFailed`."""

    timeout: float


@dataclass(frozen=True)
class WaitEnded:
    """Until the run has ended: True, or False at `timeout`."""

    timeout: float


@dataclass(frozen=True)
class Probe:
    """One health-check GET: (status or None, what happened)."""

    path: str
    deadline: float


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = WaitReady | WaitEnded | Probe | Pause
Steps = Generator[Step, Any, None]

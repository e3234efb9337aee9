"""Keeping a job moving while somebody waits on it (``eph submit``, ``eph logs -f``,
``Job.wait``): the home's agent moves it; one that is gone (crashed, stopped) is started again
every few seconds, and where none can start, the waiting process drives the job itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ephemerid.agent.control import ensure_running
from ephemerid.errors import EphemeridError
from ephemerid.reaper import reap
from ephemerid.service import Service

AGENT_CHECK_S = 3.0  # how often a wait checks that the home's agent is still there


def keep_running(service: Service, warn: Callable[[str], None]) -> bool:
    """Start the home's agent if none runs; whether one runs (``warn`` says why not)."""
    try:
        ensure_running(service.settings)
    except EphemeridError as exc:
        warn(f"the home's agent could not start ({exc}): this process drives the job")
        return False
    return True


class Driver:
    """Call ``tick(job_id)`` while waiting on a job: it keeps the job moving."""

    def __init__(self, service: Service, warn: Callable[[str], None]) -> None:
        self.service, self.warn = service, warn
        self.checked: float | None = None
        self.drive = False

    def tick(self, job_id: str) -> None:
        if self.drive:
            reap(self.service)
            return
        now = time.monotonic()
        if self.checked is not None and now - self.checked < AGENT_CHECK_S:
            return
        self.checked = now
        if not self.service.get(job_id).settled:
            self.drive = not keep_running(self.service, self.warn)

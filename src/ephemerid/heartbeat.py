"""The runner's heartbeat: a beat every ``heartbeat_s`` (and one as the entrypoint starts, saying
when), with the log and the metrics flushed often between beats, so `eph logs -f` and
`eph status` stay live. Only rank 0 beats; another rank only keeps its own log flushed.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from ephemerid import names
from ephemerid.artifacts import ArtifactStore, put_bytes
from ephemerid.contract import Heartbeat
from ephemerid.joblog import LOG_FLUSH_S, LogPump, MetricsPump


class Beats:
    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        pump: LogPump,
        metrics: MetricsPump,
        stop: threading.Event,
        say: Callable[[str], None],
    ) -> None:
        self.store, self.job_id, self.pump, self.metrics = store, job_id, pump, metrics
        self._stop, self.say = stop, say
        self.started_at: datetime | None = None  # when the entrypoint started
        self._lock = threading.Lock()

    def flush_often(self) -> None:
        """A rank other than 0 beats for nobody, but its log stays live too."""
        while not self._stop.wait(LOG_FLUSH_S):
            self.pump.flush()

    def run(self, interval: float) -> None:
        """Beat every ``interval`` seconds until stopped; flush the log and metrics meanwhile."""
        next_beat = 0.0
        while not self._stop.wait(LOG_FLUSH_S if next_beat else 0):
            self.pump.flush()
            with contextlib.suppress(Exception):  # the next round appends what this one could not
                self.metrics.pump()
            if time.monotonic() >= next_beat:
                self.beat()
                next_beat = time.monotonic() + interval

    def started(self, at: datetime) -> None:
        """Say at once that the user's code runs: its time is the user's, not idle compute."""
        try:
            self.beat(started=at)
        except Exception as exc:  # the next beat says it: the entrypoint runs on
            self.say(f"could not report the start yet: {exc}")

    def beat(self, started: datetime | None = None) -> None:
        """Write the heartbeat now; ``started``: the entrypoint has just started, at that time."""
        with self._lock:
            self.started_at = started or self.started_at
            beat = Heartbeat(at=datetime.now(UTC), pid=os.getpid(), started_at=self.started_at)
            put_bytes(self.store, names.run_key(self.job_id, names.HEARTBEAT_FILE), beat.dumps())

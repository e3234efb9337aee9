"""The local event source: turns files landing in the bucket folder into blob-created events.

It stands in for Event Grid on one machine. A file is delivered once its ETag has been the same
for two polls in a row (so a file still being copied is not picked up half-written), and again
only if it changes. Results of running jobs are delivered the same way, and the reaper and
schedules run on their own timers. Restarting it redelivers what is there, which is harmless:
every delivery is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from ephemerid import names
from ephemerid.errors import BadInput
from ephemerid.events import Delivery, fire_schedules, on_blob_created
from ephemerid.reaper import reap
from ephemerid.record import JobState, utcnow
from ephemerid.rules import Rules
from ephemerid.service import Service

log = logging.getLogger("ephemerid")
_ACTIVE = [JobState.PROVISIONING, JobState.RUNNING]


@dataclass
class LocalEvents:
    service: Service
    rules: Rules
    on_rejected: Callable[[str, BadInput], None] = lambda key, error: None
    reap_every: timedelta = timedelta(seconds=10)
    _seen: dict[str, str] = field(default_factory=dict)
    _pending: dict[str, str] = field(default_factory=dict)
    _last_reap: float = 0.0

    def poll(self) -> list[Delivery]:
        """One pass over the bucket, the running jobs' results and the timers."""
        deliveries = [d for key, etag in self._new_blobs() if (d := self._deliver(key, etag))]
        for job in self.service.store.list(_ACTIVE):
            key = names.run_key(job.id, names.RESULT_FILE)
            stat = self.service.artifacts.stat(key)
            if stat is not None:
                deliveries.append(on_blob_created(self.service, self.rules, key, stat.etag))
        if time.monotonic() - self._last_reap > self.reap_every.total_seconds():
            self._last_reap = time.monotonic()
            fire_schedules(self.service, self.rules, utcnow())
            for action in reap(self.service):
                log.info("reaper: %s", action)
        return deliveries

    def run(self, until: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                return False
            self.poll()
            time.sleep(interval)
        return True

    def _new_blobs(self) -> list[tuple[str, str]]:
        ready = []
        for stat in self.service.artifacts.list(f"{names.INCOMING}/"):
            if self._seen.get(stat.key) == stat.etag:
                continue
            if self._pending.get(stat.key) == stat.etag:
                ready.append((stat.key, stat.etag))
            else:
                self._pending[stat.key] = stat.etag
        return ready

    def _deliver(self, key: str, etag: str) -> Delivery | None:
        self._seen[key] = etag
        self._pending.pop(key, None)
        try:
            return on_blob_created(self.service, self.rules, key, etag)
        except BadInput as exc:
            log.warning("refused %s: %s", key, exc)
            self.on_rejected(key, exc)
            return None

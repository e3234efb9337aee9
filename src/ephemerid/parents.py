"""Jobs that make jobs: a sweep (``ephemerid.sweeps``) and a batch job over shards
(``ephemerid.batch.fanout``). Neither rents compute; its children do.

They share one way in and one way on: a parent is accepted once per idempotency key (what it
needs is checked before its record is made, so a bad one stores and rents nothing) and makes its
first children at once, or at the next event when the store is briefly out of reach; a child's
end, the parent's own end and every reaper pass move the parent on (``advance_parent``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ephemerid.errors import Unavailable
from ephemerid.record import JobRecord, Submitted, idempotency_key, job_id_for
from ephemerid.steps import ServiceSteps

log = logging.getLogger("ephemerid")
Advance = Callable[[str], JobRecord]


class Parents(ServiceSteps):
    """Mixed into ``Service`` (through ``Sweeps`` and ``Fanout``)."""

    def _accept_parent(
        self,
        kind: str,
        keys: tuple[str | None, str | None, str | None],
        build: Callable[[str, str], JobRecord],
        advance: Advance,
    ) -> Submitted:
        """The parent of ``kind`` for ``keys`` (the spec's own, the caller's, the namespace):
        the known one moved on, or the one ``build(id, key)`` makes (after its checks), stored
        and moved on."""
        key = idempotency_key(*keys)
        parent_id = job_id_for(kind, key)
        if self._known(parent_id, key) is not None:
            return Submitted(advance(parent_id), created=False)
        job, created = self.store.create_if_absent(build(parent_id, key))
        try:
            job = advance(job.id)
        except Unavailable as exc:  # accepted: the next event or reaper pass makes its children
            log.warning("job %s accepted; its first children wait: %s", job.id, exc)
        return Submitted(job, created=created)

    def advance_parent(self, parent_id: str) -> JobRecord:
        """Move on a job that made others: a sweep, or a batch job fanned out over shards."""
        parent = self.store.get(parent_id)
        if parent.sweep is not None:
            return self.advance_sweep(parent_id)
        if parent.fanout is not None:
            return self.advance_fanout(parent_id)
        return parent

    def _tell_parent(self, job: JobRecord) -> JobRecord:
        """A child ended, or a parent did: the parent moves on (an ended one ends its children)."""
        parent = job.parent or (job.id if job.makes_jobs else "")
        if not parent:
            return job
        try:
            self.advance_parent(parent)
        except Exception:  # the reaper's next pass moves it on; the job's own end stands
            log.exception("job %s not moved on after job %s", parent, job.id)
        return self.store.get(job.id)

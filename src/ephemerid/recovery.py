"""What the service does when a job's compute goes away under it before the job ended.

A spot VM the platform took back (with a notice: the runner reported ``evicted``; or with none:
the VM is gone and no result written) runs again on new compute from its last checkpoint, up to
``EPHEMERID_EVICTION_RETRIES``; compute given up before it ran (``ComputeStatus.UNPLACED``, e.g.
an Azure ML job failed for quota) is placed again; other compute gone with no result fails the
job. ``Recovery`` is mixed into ``Service``, whose steps it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ephemerid import names, transitions
from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.record import ComputeState, JobRecord, JobState
from ephemerid.settings import Settings
from ephemerid.store import JobStore

if TYPE_CHECKING:
    from ephemerid.transitions import Change


class Recovery:
    store: JobStore
    artifacts: ArtifactStore
    settings: Settings

    if TYPE_CHECKING:  # the Service steps this uses

        def release(self, job: JobRecord) -> JobRecord: ...
        def start(self, job_id: str) -> JobRecord: ...
        def complete(self, job_id: str) -> JobRecord: ...
        def end(self, job_id: str, state: JobState, reason: str) -> JobRecord: ...
        def has_result(self, job_id: str) -> bool: ...
        def _fail(self, job_id: str, reason: str) -> JobRecord: ...
        def _transition(self, job_id: str, change: Change) -> tuple[JobRecord, bool]: ...

    def unplaced(self, job: JobRecord) -> JobRecord:
        """Its compute was given up before it ran (``ComputeStatus.UNPLACED``): place it again."""
        job = self.release(job)
        if job.compute_state is ComputeState.RELEASED:
            job, _ = self._transition(job.id, transitions.unplaced)
        return self.start(job.id) if job.state is JobState.ACCEPTED else job

    def lost(self, job_id: str) -> JobRecord:
        """Its compute is gone and no result written. A spot VM gone so was evicted with no notice
        (Azure's Preempt events are best effort): resume from the last checkpoint; else fail."""
        job = self.store.get(job_id)
        if self.has_result(job_id):  # written after all, just before the compute went
            return self.complete(job_id)
        if job.spot and job.state is JobState.RUNNING:
            return self._evicted(job)
        return self.end(job_id, JobState.FAILED, "compute exited without writing a result")

    def _evicted(self, job: JobRecord) -> JobRecord:
        """The platform took the compute back: release it, then run the job again on new compute.

        The runner uploaded the checkpoint first, so the next run resumes from it. Each step is
        safe to repeat: the result stays until the job is queued again, then moves aside.
        """
        retries = self.settings.eviction_retries
        if job.state in (JobState.PROVISIONING, JobState.RUNNING) and job.evictions >= retries:
            reason = f"evicted {job.evictions + 1} times; no retries left ({retries} allowed)"
            return self.release(self._fail(job.id, reason))
        if job.state in (JobState.PROVISIONING, JobState.RUNNING):
            job = self.release(job)
            if job.compute_state is not ComputeState.RELEASED:
                return job  # the teardown is owed: the reaper comes back to this result
            job, _ = self._transition(job.id, transitions.requeued)
        result = names.run_key(job.id, names.RESULT_FILE)
        if job.state is JobState.ACCEPTED and self.artifacts.stat(result):  # none: no notice
            aside = names.run_key(job.id, f"evicted-{job.evictions}.json")
            put_bytes(self.artifacts, aside, get_bytes(self.artifacts, result))
            self.artifacts.delete(result)
        if job.state is JobState.ACCEPTED:
            return self.start(job.id)
        return job

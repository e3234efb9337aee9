"""What the service answers without changing anything: jobs, logs, heartbeats, live progress
(what a running job's runner reported: when its code started, its metrics so far), refusals.

``Service`` inherits these, so the reaper, the handlers and the CLI read through the service and
never reach into its store, bucket or backends.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ephemerid import names, rejections
from ephemerid.artifacts import ArtifactStore, get_bytes
from ephemerid.compute import ComputeBackend, ComputeStatus, Handle
from ephemerid.contract import Heartbeat
from ephemerid.errors import BadInput, NotFound
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow
from ephemerid.rejections import Rejection
from ephemerid.store import JobStore
from ephemerid.sweeps.state import trial_ids
from ephemerid.track import Latest, Metric, history

log = logging.getLogger("ephemerid")


@dataclass(frozen=True)
class Progress:
    """What a job's runner has reported so far, read from the job's run files.

    ``started_at``: when the user's code started (the record's once it ended, else the runner's
    first beat after the start); ``metrics``: each metric's last value and step.
    """

    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    metrics: dict[str, Metric] = field(default_factory=dict)

    def elapsed_s(self, job: JobRecord) -> float | None:
        """Seconds the user's code has run: until it ended, or until now while it runs."""
        if self.started_at is None:
            return None
        end = job.finished_at or (None if job.state.terminal else utcnow())
        return None if end is None else max((end - self.started_at).total_seconds(), 0.0)

    def to_json(self, job: JobRecord) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "elapsed_s": self.elapsed_s(job),
            "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None,
            "metrics": {name: m.to_json() for name, m in sorted(self.metrics.items())},
        }


def live_json(job: JobRecord, progress: Progress) -> dict[str, Any]:
    """The job as JSON (``JobRecord.to_json``) with its progress: ``started_at``, ``runtime_s``
    (so far, while it runs) and ``metrics`` as the runner reported them, and ``progress``."""
    data = job.to_json()
    data["started_at"] = progress.started_at.isoformat() if progress.started_at else None
    data["runtime_s"] = progress.elapsed_s(job)
    if not (job.state.terminal and job.metrics):  # an ended job's record keeps its summary
        data["metrics"] = {name: m.value for name, m in sorted(progress.metrics.items())}
    data["progress"] = progress.to_json(job)
    return data


class Reads:
    store: JobStore
    artifacts: ArtifactStore
    backends: Mapping[str, ComputeBackend]

    # -- reads -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def list(self, states: Iterable[JobState] | None = None) -> builtins.list[JobRecord]:
        return self.store.list(states)

    def list_open(self) -> builtins.list[JobRecord]:
        return self.store.list_open()

    def sweep_trials(self, sweep_id: str) -> builtins.list[JobRecord]:
        """The trial jobs of sweep ``sweep_id``, by number, as of its last step (NotFound for a
        job that is not a sweep)."""
        sweep = self.store.get(sweep_id)
        if sweep.sweep is None:
            raise NotFound(f"'{sweep_id}' is a {sweep.kind} job, not a sweep")
        found = []
        for job_id in trial_ids(sweep):
            try:
                found.append(self.store.get(job_id))
            except NotFound:
                continue
        return found

    def read_log(self, job_id: str, offset: int = 0, rank: int = 0) -> bytes:
        """The job's log from ``offset`` (rank n's own log for a distributed job); b"" if none."""
        try:
            with self.artifacts.open_read(names.run_key(job_id, names.log_file(rank)), offset) as f:
                return f.read()
        except NotFound:
            return b""

    def reported(self, job: JobRecord) -> tuple[datetime | None, dict[str, float]]:
        """What an end without a result keeps: when the code started and its metrics so far, as
        its runner reported them; nothing when they cannot be read now (an end never waits)."""
        if job.state.terminal or job.compute_state is ComputeState.NONE:
            return None, {}
        try:
            progress = self.progress(job)
        except Exception as exc:
            log.warning("job %s: its progress could not be read (%s)", job.id, exc)
            return None, {}
        return progress.started_at, {n: m.value for n, m in progress.metrics.items()}

    def has_result(self, job_id: str) -> bool:
        return self.artifacts.stat(names.run_key(job_id, names.RESULT_FILE)) is not None

    def last_heartbeat(self, job_id: str) -> datetime | None:
        beat = self.heartbeat(job_id)
        return beat.at if beat else None

    def heartbeat(self, job_id: str) -> Heartbeat | None:
        """The runner's last beat; None before the first (or when it cannot be read)."""
        try:
            data = get_bytes(self.artifacts, names.run_key(job_id, names.HEARTBEAT_FILE))
        except NotFound:
            return None
        return Heartbeat.loads(data)

    def read_metrics(self, job_id: str, offset: int = 0) -> bytes:
        """The job's metrics.jsonl from ``offset``, as far as the runner has uploaded it."""
        try:
            with self.artifacts.open_read(names.run_key(job_id, names.METRICS_FILE), offset) as f:
                return f.read()
        except NotFound:
            return b""

    def metric_history(self, job_id: str) -> dict[str, builtins.list[tuple[int | None, float]]]:
        """Each metric's values as the job's code logged them: (step, value), oldest first."""
        return history(self.read_metrics(job_id).splitlines())

    def progress(self, job: JobRecord) -> Progress:
        """What ``job``'s runner has reported: when its code started, each metric's last value."""
        ended = job.state.terminal and job.started_at is not None
        beat = None if ended else self.heartbeat(job.id)  # an ended job's record says it all
        started = job.started_at or reported_start(job, beat)
        latest = Latest()
        latest.feed(self.read_metrics(job.id))
        metrics = latest.metrics or {n: Metric(n, v) for n, v in job.metrics.items()}
        return Progress(started, beat.at if beat else None, metrics)

    def poll(self, job: JobRecord) -> ComputeStatus:
        """What the job's backend says of its compute now."""
        return self.backends[job.backend].poll(Handle(job.backend, job.id, job.handle))

    def etag_of(self, key: str) -> str | None:
        """The blob's ETag, None when it is not there (BadInput for a name that escapes)."""
        stat = self.artifacts.stat(key)
        return stat.etag if stat else None

    def uri(self, key: str) -> str:
        return self.artifacts.uri(key)

    @property
    def bucket_uri(self) -> str:
        return self.artifacts.root_uri

    def reject(
        self, source: str, request_id: str, error: BadInput, body: bytes | str, owner: str = ""
    ) -> Rejection:
        """Record why a request could not become a job, for its sender to read."""
        return rejections.record(self.artifacts, source, request_id, error, body, owner)

    def rejections(self, limit: int = 100, owner: str | None = None) -> builtins.list[Rejection]:
        """The newest refusals; only ``owner``'s when one is given."""
        return rejections.listing(self.artifacts, limit, owner)

    def held_compute(self) -> int:
        """How many pieces of compute the backends hold now (what would be billed)."""
        return sum(len(backend.list_owned()) for backend in self.backends.values())


def reported_start(job: JobRecord, beat: Heartbeat | None) -> datetime | None:
    """The start a beat reports, if it is of this job's compute (not of one before an eviction)."""
    if beat is None or beat.started_at is None:
        return None
    since = job.compute_requested_at
    return beat.started_at if since is None or beat.started_at >= since else None

"""What the service answers without changing anything: jobs, logs, heartbeats, refusals.

``Service`` inherits these, so the reaper, the handlers and the CLI read through the service and
never reach into its store, bucket or backends.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Mapping
from datetime import datetime

from ephemerid import names, rejections
from ephemerid.artifacts import ArtifactStore, get_bytes
from ephemerid.compute import ComputeBackend, ComputeStatus, Handle
from ephemerid.errors import BadInput, NotFound
from ephemerid.record import JobRecord, JobState
from ephemerid.rejections import Rejection
from ephemerid.store import JobStore


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

    def read_log(self, job_id: str, offset: int = 0, rank: int = 0) -> bytes:
        """The job's log from ``offset`` (rank n's own log for a distributed job); b"" if none."""
        try:
            with self.artifacts.open_read(names.run_key(job_id, names.log_file(rank)), offset) as f:
                return f.read()
        except NotFound:
            return b""

    def has_result(self, job_id: str) -> bool:
        return self.artifacts.stat(names.run_key(job_id, names.RESULT_FILE)) is not None

    def last_heartbeat(self, job_id: str) -> datetime | None:
        try:
            beat = json.loads(
                get_bytes(self.artifacts, names.run_key(job_id, names.HEARTBEAT_FILE))
            )
            return datetime.fromisoformat(beat["at"])
        except (NotFound, ValueError, KeyError, TypeError):
            return None

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

"""Azure Table Storage JobStore (``table://<table>``; account from EPHEMERID_STORAGE).

Partition design: each job is its own partition (PartitionKey = job id, RowKey = ``job``).
Job ids are hashes of idempotency keys, so writes spread evenly over partitions and no
partition runs hot however many events arrive at once; create-if-absent is an insert that
exactly one writer wins; compare-and-swap is a replace conditioned on the entity's ETag.

Listing by state would scan the whole table, which grows with history. The reaper lists only
*open* jobs (unfinished, compute not yet released, or a model owed), so those are also kept in
one small index partition (PartitionKey = ``open``, RowKey = job id). The index is a hint, never
the truth: an entry is written before the job is created (and again after, in case a listing
dropped it in between), written before any update that leaves the job open, and removed after
the job closes; ``list_open`` re-reads each job and drops entries that no longer hold. A crash
between two writes leaves at most a stale entry, which the next listing removes.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import re
import threading
from collections.abc import Iterable
from typing import Any

from ephemerid.azure.clients import table_client
from ephemerid.azure.connection import StorageConnection
from ephemerid.azure.errors import sdk_errors
from ephemerid.errors import BadInput, Conflict, NotFound
from ephemerid.record import JobRecord, JobState

ROW = "job"
OPEN = "open"
CHUNK_CHARS = 30_000  # a string property holds at most 64 KiB (32K UTF-16 characters)
MAX_CHUNKS = 16  # an entity holds at most 1 MiB in all
ROLE = "Storage Table Data Contributor"
# No PartitionKey can hold these: an id with one names no job, and the service is not asked.
_NOT_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")


class TableJobStore:
    """``options`` go to the SDK's TableClient (a test's ``transport=``, ``retry_total=``)."""

    def __init__(self, connection: StorageConnection, table: str, **options: Any) -> None:
        if (
            not (table.isascii() and table.isalnum())
            or not 3 <= len(table) <= 63
            or table[0].isdigit()
        ):
            raise BadInput(f"table name '{table}' must be 3-63 letters and digits")
        self.client = table_client(connection, table, **options)
        self.table = table
        try:
            with self._calling(f"opening table '{table}'"):
                self.client.create_table()
        except Conflict:
            pass  # it exists
        self._etags: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        stored = record.evolve(version=1)
        self._index(stored)
        try:
            with self._calling(f"creating job {record.id}"):
                meta = self.client.create_entity(self._entity(stored))
        except Conflict:
            existing = self.get(record.id)
            if existing.key != record.key:
                raise Conflict(
                    f"job id {record.id} already exists for another idempotency key"
                ) from None
            return existing, False
        self._remember(stored, meta["etag"])
        self._index(stored)  # a listing between the two writes may have dropped the entry
        return stored, True

    def get(self, job_id: str) -> JobRecord:
        """The job; NotFound only when the table answers 404 (or no key could hold the id).

        Any other failure (a 503, a reset) is Unavailable or another error, never NotFound: a
        caller that reads NotFound as "no such job" must not drop a real one.
        """
        missing = f"no job '{job_id}': `eph list` shows the jobs there are"
        if not job_id or _NOT_IN_KEYS.search(job_id):
            raise NotFound(missing)
        try:
            with self._calling(f"reading job {job_id}"):
                entity = self.client.get_entity(job_id, ROW)
        except NotFound as exc:
            raise NotFound(missing) from exc.__cause__
        return self._record(entity)

    def update(self, record: JobRecord) -> JobRecord:
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        etag = self._etag_of(record)
        stored = record.evolve(version=record.version + 1)
        if stored.open:
            self._index(stored)
        try:
            with self._calling(f"updating job {record.id}"):
                meta = self.client.update_entity(
                    self._entity(stored),
                    mode=UpdateMode.REPLACE,
                    etag=etag,
                    match_condition=MatchConditions.IfNotModified,
                )
        except (Conflict, NotFound) as exc:  # 412: another writer won; 404: it was deleted
            raise Conflict(
                f"job {record.id} changed since version {record.version}"
            ) from exc.__cause__
        self._remember(stored, meta["etag"])
        if not stored.open:
            self._unindex(stored.id)
        return stored

    def list(self, states: Iterable[JobState] | None = None) -> builtins.list[JobRecord]:
        query = f"RowKey eq '{ROW}'"
        parameters: dict[str, Any] = {}
        if states is not None:
            wanted = [s.value for s in states]
            if not wanted:
                return []
            names = [f"s{i}" for i in range(len(wanted))]
            # the SDK substitutes @names between spaces, so the parentheses stand apart
            query += " and ( " + " or ".join(f"State eq @{n}" for n in names) + " )"
            parameters = dict(zip(names, wanted, strict=True))
        with self._calling("listing jobs"):
            entities = list(self.client.query_entities(query, parameters=parameters))
        records = [self._record(e) for e in entities]
        return _newest_first(records)

    def list_open(self) -> builtins.list[JobRecord]:
        found = []
        with self._calling("listing open jobs"):
            entries = list(self.client.query_entities(f"PartitionKey eq '{OPEN}'"))
        for entry in entries:
            try:
                job = self.get(entry["RowKey"])
            except NotFound:
                job = None
            if job is not None and job.open:
                found.append(job)
            else:
                self._unindex(entry["RowKey"])
        return _newest_first(found)

    def close(self) -> None:
        self.client.close()

    def _index(self, record: JobRecord) -> None:
        with self._calling(f"indexing open job {record.id}"):
            self.client.upsert_entity({"PartitionKey": OPEN, "RowKey": record.id})

    def _unindex(self, job_id: str) -> None:
        with self._calling(f"unindexing closed job {job_id}"):
            self.client.delete_entity(OPEN, job_id)  # deleting a missing entity is not an error

    def _calling(self, what: str) -> contextlib.AbstractContextManager[None]:
        return sdk_errors(f"{what} in table '{self.table}'", role=ROLE)

    def _etag_of(self, record: JobRecord) -> str:
        with self._lock:
            cached = self._etags.get((record.id, record.version))
        if cached:
            return cached
        try:
            current = self.get(record.id)  # remembers the etag of what it read
        except NotFound as exc:
            raise Conflict(f"job {record.id} does not exist (any more)") from exc
        if current.version != record.version:
            raise Conflict(f"job {record.id} changed since version {record.version}")
        with self._lock:
            return self._etags[(record.id, record.version)]

    def _remember(self, record: JobRecord, etag: str) -> None:
        with self._lock:
            if len(self._etags) > 10_000:
                self._etags.clear()
            self._etags[(record.id, record.version)] = etag

    def _entity(self, record: JobRecord) -> dict[str, Any]:
        data = record.dumps()
        chunks = [data[i : i + CHUNK_CHARS] for i in range(0, len(data), CHUNK_CHARS)]
        if len(chunks) > MAX_CHUNKS:
            raise BadInput(f"job {record.id} is too large to store ({len(data)} characters)")
        entity: dict[str, Any] = {
            "PartitionKey": record.id,
            "RowKey": ROW,
            "Key": record.key,
            "State": record.state.value,
            "Version": record.version,
            "Chunks": len(chunks),
        }
        entity.update({f"Data{i}": chunk for i, chunk in enumerate(chunks)})
        return entity

    def _record(self, entity: Any) -> JobRecord:
        data = "".join(entity[f"Data{i}"] for i in range(int(entity["Chunks"])))
        record = JobRecord.from_json(json.loads(data))
        self._remember(record, entity.metadata["etag"])
        return record


def _newest_first(records: builtins.list[JobRecord]) -> builtins.list[JobRecord]:
    """Newest first, ties by id ascending: the order the SQLite store gives."""
    by_id = sorted(records, key=lambda r: r.id)
    return sorted(by_id, key=lambda r: r.created_at, reverse=True)

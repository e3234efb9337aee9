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
import json
import threading
from collections.abc import Iterable
from typing import Any

from ephemerid.azure.connection import StorageConnection
from ephemerid.errors import BadInput, Conflict, EphemeridError, NotFound, require_extra
from ephemerid.record import JobRecord, JobState

ROW = "job"
OPEN = "open"
CHUNK_CHARS = 30_000  # a string property holds at most 64 KiB (32K UTF-16 characters)
MAX_CHUNKS = 16  # an entity holds at most 1 MiB in all


class TableJobStore:
    def __init__(self, connection: StorageConnection, table: str) -> None:
        require_extra("azure.data.tables", "azure")
        from azure.core.exceptions import HttpResponseError, ResourceExistsError
        from azure.data.tables import TableClient

        if not table.isalnum() or not 3 <= len(table) <= 63 or table[0].isdigit():
            raise BadInput(f"table name '{table}' must be 3-63 letters and digits")
        if connection.connection_string:
            self.client = TableClient.from_connection_string(connection.connection_string, table)
        else:
            self.client = TableClient(
                connection.uri("table"), table, credential=connection.credential()
            )
        try:
            self.client.create_table()
        except ResourceExistsError:
            pass
        except HttpResponseError as exc:
            raise EphemeridError(f"cannot open table '{table}': {exc.message}") from exc
        self._etags: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()

    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        from azure.core.exceptions import ResourceExistsError

        stored = record.evolve(version=1)
        self._index(stored)
        try:
            meta = self.client.create_entity(self._entity(stored))
        except ResourceExistsError:
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
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            entity = self.client.get_entity(job_id, ROW)
        except (ResourceNotFoundError, HttpResponseError) as exc:  # an id no entity can have
            raise NotFound(f"no job '{job_id}': `eph list` shows the jobs there are") from exc
        return self._record(entity)

    def update(self, record: JobRecord) -> JobRecord:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        etag = self._etag_of(record)
        stored = record.evolve(version=record.version + 1)
        if stored.open:
            self._index(stored)
        try:
            meta = self.client.update_entity(
                self._entity(stored),
                mode=UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError) as exc:
            raise Conflict(f"job {record.id} changed since version {record.version}") from exc
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
        entities = self.client.query_entities(query, parameters=parameters)
        records = [self._record(e) for e in entities]
        return _newest_first(records)

    def list_open(self) -> builtins.list[JobRecord]:
        found = []
        for entry in self.client.query_entities(f"PartitionKey eq '{OPEN}'"):
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
        self.client.upsert_entity({"PartitionKey": OPEN, "RowKey": record.id})

    def _unindex(self, job_id: str) -> None:
        self.client.delete_entity(OPEN, job_id)  # deleting a missing entity is not an error

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

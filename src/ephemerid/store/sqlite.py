"""SQLite JobStore: the embedded default. WAL mode, one connection per thread.

A row's ``version`` goes up with every change, so (id, version) names one content for good: the
store keeps the records it last wrote or read by id and answers a read of that same version
without parsing and validating the JSON again. Records are immutable (frozen, and their dicts
and lists are never changed in place), so handing out the same one twice is safe.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ephemerid.errors import Conflict, NotFound
from ephemerid.record import JobRecord, JobState

try:
    import fcntl
except ImportError:  # Windows: processes meet SQLite's own lock only
    fcntl = None  # type: ignore[assignment]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    open INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(open) WHERE open = 1;
"""
_KEPT = 4096  # records kept by id for reads of an unchanged version


class SqliteJobStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Writers take turns here first: a thread waiting on a lock wakes the moment it is free,
        # where SQLite's busy handler sleeps and polls (1 ms, 2, 5 ... up to 100 ms a try), and
        # a writer that sleeps can lose every turn to the writers of another process. Threads
        # take a Python lock, processes an flock on <file>.lock; SQLite's own lock and busy
        # timeout still stand behind both (for any other program writing to the file).
        self._write = threading.Lock()
        self._flock: tuple[int, int] | None = None  # (pid, descriptor) of <file>.lock
        self._kept: OrderedDict[str, JobRecord] = OrderedDict()
        self._kept_lock = threading.Lock()
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._write:
            fd = self._lock_file()
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_file(self) -> int | None:
        """This process's descriptor of <file>.lock (a forked child opens its own)."""
        if fcntl is None:
            return None
        if self._flock is None or self._flock[0] != os.getpid():
            path = self.path.with_name(self.path.name + ".lock")
            self._flock = (os.getpid(), os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
        return self._flock[1]

    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        stored = record.evolve(version=1)
        row = (
            stored.id,
            stored.key,
            stored.state.value,
            1,
            stored.open,
            stored.created_at.isoformat(),
            stored.dumps(),
        )
        with self._writing():
            cursor = self._conn().execute(
                "INSERT OR IGNORE INTO jobs (id, key, state, version, open, created_at, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        if cursor.rowcount == 1:
            return self._keep(stored), True
        row = (
            self._conn()
            .execute("SELECT id, version, data FROM jobs WHERE key = ?", (record.key,))
            .fetchone()
        )
        if row is None:  # same id under another key: a hash collision, never silently merged
            raise Conflict(f"job id {record.id} already exists for another idempotency key")
        return self._record(row), False

    def get(self, job_id: str) -> JobRecord:
        row = (
            self._conn()
            .execute("SELECT id, version, data FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no job '{job_id}': `eph list` shows the jobs there are")
        return self._record(row)

    def update(self, record: JobRecord) -> JobRecord:
        stored = record.evolve(version=record.version + 1)
        values = (stored.state.value, stored.version, stored.open, stored.dumps())
        with self._writing():
            cursor = self._conn().execute(
                "UPDATE jobs SET state = ?, version = ?, open = ?, data = ? "
                "WHERE id = ? AND version = ?",
                (*values, record.id, record.version),
            )
        if cursor.rowcount != 1:
            raise Conflict(f"job {record.id} changed since version {record.version}")
        return self._keep(stored)

    def list(self, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        sql, args = "SELECT id, version, data FROM jobs", []
        if states is not None:
            wanted = [s.value for s in states]
            if not wanted:
                return []
            sql += f" WHERE state IN ({','.join('?' * len(wanted))})"
            args = wanted
        sql += " ORDER BY created_at DESC, id"
        rows = self._conn().execute(sql, args).fetchall()
        return [self._record(row) for row in rows]

    def list_open(self) -> builtins.list[JobRecord]:
        rows = (
            self._conn()
            .execute(
                "SELECT id, version, data FROM jobs WHERE open = 1 ORDER BY created_at DESC, id"
            )
            .fetchall()
        )
        return [self._record(row) for row in rows]

    # -- records kept by (id, version) -------------------------------------------------------

    def _record(self, row: tuple[str, int, str]) -> JobRecord:
        """The record in ``row`` (id, version, data): the kept one if it is that version."""
        job_id, version, data = row
        with self._kept_lock:
            kept = self._kept.get(job_id)
        if kept is not None and kept.version == version:
            return kept
        return self._keep(JobRecord.from_json(json.loads(data)))

    def _keep(self, record: JobRecord) -> JobRecord:
        with self._kept_lock:
            kept = self._kept.get(record.id)
            if kept is not None and kept.version > record.version:
                return record  # a newer one was kept meanwhile: keep that
            self._kept[record.id] = record
            self._kept.move_to_end(record.id)
            if len(self._kept) > _KEPT:
                self._kept.popitem(last=False)
        return record

    def close(self) -> None:
        if self._flock is not None and self._flock[0] == os.getpid():
            os.close(self._flock[1])
        self._flock = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

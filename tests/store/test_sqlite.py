"""SqliteJobStore: what only the file-backed store does (the contract is in test_contract.py)."""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemerid.errors import BadInput, Conflict
from ephemerid.record import JobRecord, JobState, job_id_for
from ephemerid.spec import validate_spec
from ephemerid.store import ADAPTERS, JobStore, open_store
from ephemerid.store.sqlite import SqliteJobStore

SPEC = validate_spec({"kind": "train", "name": "churn", "code": "/srv/code", "entrypoint": "t.py"})


def record(key: str) -> JobRecord:
    return JobRecord(id=job_id_for("train", key), key=key, spec=SPEC, source="test")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.db"


@pytest.fixture
def store(db: Path) -> Iterator[JobStore]:
    opened = open_store(f"sqlite://{db}")
    yield opened
    opened.close()


def test_the_url_names_the_file_and_its_folder_is_made(db: Path, store: JobStore) -> None:
    store.create_if_absent(record("k"))

    assert isinstance(store, SqliteJobStore)
    assert store.path == db
    with sqlite3.connect(db) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
    assert count == 1


def test_the_store_file_survives_reopening(db: Path, store: JobStore) -> None:
    stored, _ = store.create_if_absent(record("k"))
    store.update(stored.evolve(state=JobState.RUNNING))
    store.close()

    reopened = SqliteJobStore(db)
    try:
        assert reopened.get(stored.id).state is JobState.RUNNING
        _, created = reopened.create_if_absent(record("k"))
        assert created is False
    finally:
        reopened.close()


@pytest.mark.parametrize("url", ["postgres://db/jobs", "/tmp/jobs.db", "sqlite:/tmp/jobs.db"])
def test_an_unknown_store_url_is_refused_naming_the_supported_schemes(url: str) -> None:
    with pytest.raises(BadInput) as caught:
        open_store(url)

    assert url in str(caught.value)
    for scheme in ADAPTERS:
        assert f"{scheme}://" in str(caught.value)


def test_a_change_made_through_another_store_on_the_same_file_is_read(
    db: Path, store: JobStore
) -> None:
    stored, _ = store.create_if_absent(record("k"))
    assert store.get(stored.id) is store.get(stored.id)  # an unchanged version, kept

    other = SqliteJobStore(db)  # another process, as far as this store can tell
    try:
        other.update(other.get(stored.id).evolve(state=JobState.RUNNING, reason="elsewhere"))
    finally:
        other.close()

    seen = store.get(stored.id)
    assert (seen.state, seen.reason, seen.version) == (JobState.RUNNING, "elsewhere", 2)
    assert [job.version for job in store.list()] == [2]
    assert [job.version for job in store.list_open()] == [2]
    with pytest.raises(Conflict):
        store.update(stored.evolve(state=JobState.CANCELLED))  # the kept version 1 is stale


def test_a_kept_record_reads_the_same_as_its_row(db: Path, store: JobStore) -> None:
    stored, _ = store.create_if_absent(record("k"))
    moved = store.update(stored.evolve(state=JobState.PROVISIONING, handle={"vm": "v1"}))

    fresh = SqliteJobStore(db)  # keeps nothing yet: parses the row
    try:
        assert fresh.get(moved.id) == store.get(moved.id) == moved
    finally:
        fresh.close()


def _bump(db: Path, job_id: str, times: int) -> None:
    store = SqliteJobStore(db)
    try:
        done = 0
        while done < times:
            job = store.get(job_id)
            try:
                store.update(job.evolve(teardown_attempts=job.teardown_attempts + 1))
            except Conflict:
                continue
            done += 1
    finally:
        store.close()


def test_writers_in_two_processes_take_turns_and_no_change_is_lost(
    db: Path, store: JobStore
) -> None:
    stored, _ = store.create_if_absent(record("k"))
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter, as a second host would be
    workers = [ctx.Process(target=_bump, args=(db, stored.id, 40)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert [worker.exitcode for worker in workers] == [0, 0]
    job = store.get(stored.id)
    assert (job.teardown_attempts, job.version) == (80, 81)
    assert (db.parent / "jobs.db.lock").exists()

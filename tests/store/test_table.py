"""TableJobStore on Azurite: what only the Azure Table store does (the contract is elsewhere).

Records are split over several string properties, and open jobs are also kept in a small index
partition that is a hint, never the truth.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ephemerid.errors import BadInput
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for
from ephemerid.spec import validate_spec
from ephemerid.store import open_store
from ephemerid.store.table import OPEN, ROW, TableJobStore


def record(key: str, **params: object) -> JobRecord:
    spec = validate_spec(
        {"kind": "train", "name": "m", "code": "/c", "entrypoint": "t.py", "params": params}
    )
    return JobRecord(id=job_id_for("train", key), key=key, spec=spec, source="test")


@pytest.fixture
def store(azurite_connection: str) -> Iterator[TableJobStore]:
    opened = open_store(f"table://t{uuid.uuid4().hex}", {"EPHEMERID_STORAGE": azurite_connection})
    assert isinstance(opened, TableJobStore)
    yield opened
    opened.close()


def index_entries(store: TableJobStore) -> list[str]:
    return sorted(e["RowKey"] for e in store.client.query_entities(f"PartitionKey eq '{OPEN}'"))


def test_a_record_too_large_for_one_property_round_trips(store: TableJobStore) -> None:
    big = record("big", notes="ü" + "x" * 100_000)

    stored, _ = store.create_if_absent(big)
    moved = store.update(stored.evolve(state=JobState.RUNNING))

    assert store.get(big.id) == moved
    assert store.get(big.id).spec.params["notes"] == "ü" + "x" * 100_000
    assert store.client.get_entity(big.id, ROW)["Chunks"] > 1
    assert store.list() == [moved]


def test_a_record_too_large_for_an_entity_is_refused_naming_the_job(store: TableJobStore) -> None:
    huge = record("huge", notes="x" * 1_000_000)

    with pytest.raises(BadInput, match=huge.id):
        store.create_if_absent(huge)


def test_a_record_over_the_1_mib_entity_limit_is_refused_before_azure_sees_it(
    store: TableJobStore,
) -> None:
    over = record("over", notes="x" * 600_000)  # 1.2 MB in UTF-16

    with pytest.raises(BadInput, match=over.id):
        store.create_if_absent(over)


def test_the_open_index_holds_only_open_jobs_once_they_close(store: TableJobStore) -> None:
    running, _ = store.create_if_absent(record("running"))
    done, _ = store.create_if_absent(record("done"))
    assert index_entries(store) == sorted([running.id, done.id])

    store.update(done.evolve(state=JobState.SUCCEEDED, compute_state=ComputeState.RELEASED))

    assert index_entries(store) == [running.id]


def test_a_stale_index_entry_for_a_closed_job_is_dropped_by_list_open(
    store: TableJobStore,
) -> None:
    closed, _ = store.create_if_absent(record("closed"))
    store.update(closed.evolve(state=JobState.CANCELLED))
    open_job, _ = store.create_if_absent(record("open"))
    store.client.upsert_entity({"PartitionKey": OPEN, "RowKey": closed.id})

    assert [r.id for r in store.list_open()] == [open_job.id]
    assert index_entries(store) == [open_job.id]


def test_an_index_entry_for_a_job_that_was_never_created_is_dropped(
    store: TableJobStore,
) -> None:
    store.client.upsert_entity({"PartitionKey": OPEN, "RowKey": "train-000000000000"})

    assert store.list_open() == []
    assert index_entries(store) == []


def test_a_reaper_pass_between_the_two_writes_of_a_create_does_not_lose_the_job(
    store: TableJobStore,
) -> None:
    # Replay create_if_absent's writes by hand, with a list_open between the first two.
    job, _ = store.create_if_absent(record("being-created"))
    entity = dict(store.client.get_entity(job.id, ROW))
    store.client.delete_entity(job.id, ROW)
    store.client.delete_entity(OPEN, job.id)

    store.client.upsert_entity({"PartitionKey": OPEN, "RowKey": job.id})  # first write
    store.list_open()  # the reaper's pass
    store.client.create_entity(entity)  # second write
    store.client.upsert_entity({"PartitionKey": OPEN, "RowKey": job.id})  # third: re-index

    assert [r.id for r in store.list_open()] == [job.id]


@pytest.mark.parametrize("name", ["my-jobs", "1jobs", "ab", "a" * 64, "jobs_v2"])
def test_a_bad_table_name_is_bad_input_naming_it(azurite_connection: str, name: str) -> None:
    with pytest.raises(BadInput, match="letters and digits") as caught:
        open_store(f"table://{name}", {"EPHEMERID_STORAGE": azurite_connection})

    assert name in str(caught.value)


def test_a_missing_storage_connection_is_bad_input_naming_the_settings_to_set() -> None:
    with pytest.raises(BadInput) as caught:
        open_store("table://jobs", {})

    assert "EPHEMERID_STORAGE " in str(caught.value)
    assert "EPHEMERID_STORAGE__accountName" in str(caught.value)


def test_the_table_defaults_to_jobs(azurite_connection: str) -> None:
    store = open_store("table://", {"EPHEMERID_STORAGE": azurite_connection})
    try:
        assert isinstance(store, TableJobStore)
        assert store.client.table_name == "jobs"
    finally:
        store.close()

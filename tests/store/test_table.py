"""TableJobStore on Azurite: what only the Azure Table store does (the contract is elsewhere).

Records are split over several string properties, and open jobs are also kept in a small index
partition that is a hint, never the truth. Only a definite 404 is NotFound: a table service that
is busy or unreachable is Unavailable, and a result seen meanwhile is retried, never dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.functions.blob import InputStream

from ephemerid import names
from ephemerid.artifacts import put_bytes
from ephemerid.azure.connection import storage_connection
from ephemerid.contract import Result, RunStatus
from ephemerid.errors import BadInput, NotFound, Unavailable
from ephemerid.functions.handlers import Handlers
from ephemerid.intake import on_blob_created
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.spec import validate_spec
from ephemerid.store import open_store
from ephemerid.store.table import OPEN, ROW, TableJobStore
from outage import Outage


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


@pytest.fixture
def outage() -> Outage:
    return Outage()


@pytest.fixture
def flaky(azurite_connection: str, outage: Outage) -> Iterator[TableJobStore]:
    """A table store whose transport answers what ``outage`` says while it lasts."""
    connection = storage_connection({"EPHEMERID_STORAGE": azurite_connection})
    opened = TableJobStore(connection, f"t{uuid.uuid4().hex}", **outage.client_options())
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


# -- a service that fails is not a job that is absent --------------------------------------------


@pytest.mark.parametrize(("status", "code"), [(503, "ServerBusy"), (500, "InternalError")])
def test_a_server_error_from_the_table_is_unavailable_not_not_found(
    flaky: TableJobStore, outage: Outage, status: int, code: str
) -> None:
    job, _ = flaky.create_if_absent(record("busy"))
    outage.answer(status, code)

    with pytest.raises(Unavailable, match=job.id) as caught:
        flaky.get(job.id)

    assert not isinstance(caught.value, NotFound)
    assert "retried" in str(caught.value)
    outage.end()
    assert flaky.get(job.id) == job


def test_throttling_and_a_reset_connection_are_unavailable(
    flaky: TableJobStore, outage: Outage
) -> None:
    job, _ = flaky.create_if_absent(record("throttled"))

    outage.answer(429, "TooManyRequests")
    with pytest.raises(Unavailable, match=job.id):
        flaky.get(job.id)
    outage.reset()
    with pytest.raises(Unavailable, match=job.id):
        flaky.get(job.id)
    with pytest.raises(Unavailable):
        flaky.list_open()


def test_a_404_from_the_table_is_still_not_found(flaky: TableJobStore, outage: Outage) -> None:
    with pytest.raises(NotFound, match="train-000000000000"):
        flaky.get("train-000000000000")  # Azurite's own 404

    outage.answer(404, "ResourceNotFound")
    with pytest.raises(NotFound, match="train-000000000001"):
        flaky.get("train-000000000001")


def test_a_result_seen_while_the_table_is_unavailable_raises_and_completes_once_it_answers(
    flaky: TableJobStore, outage: Outage, service: Service
) -> None:
    on_table = Service(flaky, service.artifacts, service.backends, service.settings)
    stored, _ = flaky.create_if_absent(record("result-in-an-outage").evolve(backend="local"))
    running = flaky.update(stored.evolve(state=JobState.RUNNING))
    key = names.run_key(running.id, names.RESULT_FILE)
    result = Result(job_id=running.id, status=RunStatus.SUCCEEDED).dumps()
    etag = put_bytes(service.artifacts, key, result).etag
    rules = Rules.parse("", base=Path())
    outage.answer(503)

    with pytest.raises(Unavailable, match=running.id):  # the platform delivers it again
        on_blob_created(on_table, rules, key, etag)
    event = InputStream(data=b"", name=key, length=2, blob_properties={"ETag": f'"{etag}"'})
    with pytest.raises(Unavailable, match=running.id):  # out of the function, not swallowed
        Handlers(on_table, rules).run_result(event)

    outage.end()
    assert flaky.get(running.id).state is JobState.RUNNING
    completed = on_blob_created(on_table, rules, key, etag).completed
    assert completed is not None
    assert completed.state is JobState.SUCCEEDED
    assert flaky.get(running.id).state is JobState.SUCCEEDED

"""The JobStore contract, run against every adapter: SQLite (a file) and Azure Table (Azurite).

Each test runs once per adapter, so an adapter that drifts from the others fails here.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from ephemerid.errors import Conflict, NotFound
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for
from ephemerid.spec import validate_spec
from ephemerid.store import ADAPTERS, JobStore, open_store

T = TypeVar("T")
THREADS = 8
STORES = ["sqlite", "table"]

SPEC = validate_spec(
    {
        "kind": "train",
        "name": "churn",
        "code": "/srv/code",
        "entrypoint": "train.py",
        "params": {"epochs": 3, "cmd": "; rm -rf / $(x)"},
        "register_as": {"name": "churn", "alias": "production"},
        "compute": {"gpus": 1, "skus": ["a", "b"], "spot": "prefer", "max_runtime": "2h"},
    }
)


def record(key: str, **fields: object) -> JobRecord:
    return JobRecord(id=job_id_for("train", key), key=key, spec=SPEC, source="test", **fields)


@pytest.fixture(params=STORES)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_same(
    adapter: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], JobStore]]:
    """Opens a store on this test's own storage; every store it opened is closed after."""
    if adapter == "sqlite":
        url, env = f"sqlite://{tmp_path / 'state' / 'jobs.db'}", {}
    else:
        connection = request.getfixturevalue("azurite_connection")
        url, env = f"table://t{uuid.uuid4().hex}", {"EPHEMERID_STORAGE": connection}
    opened: list[JobStore] = []

    def open_one() -> JobStore:
        opened.append(open_store(url, env))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_same: Callable[[], JobStore]) -> JobStore:
    return open_same()


def in_threads(work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in THREADS threads released together; re-raise the first error."""
    start = threading.Barrier(THREADS)
    results: list[T | None] = [None] * THREADS
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def test_every_registered_adapter_runs_this_contract() -> None:
    assert sorted(ADAPTERS) == sorted(STORES)


# --- create and get ------------------------------------------------------------------------


def test_create_if_absent_creates_once_then_returns_the_stored_record(store: JobStore) -> None:
    first, created = store.create_if_absent(record("blob:a.csv@1"))
    again, created_again = store.create_if_absent(record("blob:a.csv@1", reason="redelivered"))

    assert created is True
    assert created_again is False
    assert again == first
    assert again.reason == ""
    assert first.version == 1


def test_a_different_key_makes_a_different_job(store: JobStore) -> None:
    store.create_if_absent(record("blob:a.csv@1"))
    _, created = store.create_if_absent(record("blob:a.csv@2"))

    assert created is True
    assert len(store.list()) == 2


def test_an_id_reused_under_another_key_is_a_conflict_not_a_merge(store: JobStore) -> None:
    first = record("key-one")
    store.create_if_absent(first)

    with pytest.raises(Conflict, match=first.id):
        store.create_if_absent(JobRecord(id=first.id, key="key-two", spec=SPEC, source="test"))

    assert store.get(first.id).key == "key-one"


def test_getting_an_unknown_job_is_not_found_naming_it(store: JobStore) -> None:
    with pytest.raises(NotFound, match="train-doesnotexist"):
        store.get("train-doesnotexist")


@pytest.mark.parametrize("job_id", ["runs/j1", "it's", "a#b?c", "ü-模型"])
def test_getting_an_id_no_job_could_have_is_not_found(
    store: JobStore, job_id: str, request: pytest.FixtureRequest
) -> None:
    with pytest.raises(NotFound):
        store.get(job_id)


# --- compare-and-swap ----------------------------------------------------------------------


def test_update_is_compare_and_swap_on_version(store: JobStore) -> None:
    stored, _ = store.create_if_absent(record("k"))
    moved = store.update(stored.evolve(state=JobState.PROVISIONING))

    with pytest.raises(Conflict) as caught:
        store.update(stored.evolve(state=JobState.CANCELLED))

    assert stored.id in str(caught.value)
    assert store.get(stored.id).state is JobState.PROVISIONING
    assert store.get(stored.id) == moved


def test_versions_increase_with_every_update(store: JobStore) -> None:
    current, _ = store.create_if_absent(record("k"))
    seen = [current.version]
    for state in (JobState.PROVISIONING, JobState.RUNNING, JobState.SUCCEEDED):
        current = store.update(current.evolve(state=state))
        seen.append(current.version)

    assert seen == [1, 2, 3, 4]
    assert store.get(current.id).version == 4


def test_updating_a_job_that_was_never_created_is_a_conflict(
    store: JobStore, request: pytest.FixtureRequest
) -> None:
    with pytest.raises(Conflict):
        store.update(record("never-created"))


def test_a_second_store_on_the_same_storage_sees_writes_and_loses_a_stale_swap(
    open_same: Callable[[], JobStore],
) -> None:
    one, other = open_same(), open_same()
    stored, _ = one.create_if_absent(record("k"))

    other.update(other.get(stored.id).evolve(state=JobState.RUNNING))

    assert one.get(stored.id).state is JobState.RUNNING
    with pytest.raises(Conflict):
        one.update(stored.evolve(state=JobState.CANCELLED))
    _, created = other.create_if_absent(record("k"))
    assert created is False


# --- listing -------------------------------------------------------------------------------


def test_list_filters_by_state_and_returns_newest_first(store: JobStore) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    made = {}
    for i, state in enumerate(
        [JobState.RUNNING, JobState.SUCCEEDED, JobState.RUNNING, JobState.FAILED]
    ):
        made[i], _ = store.create_if_absent(
            record(f"k{i}", state=state, created_at=base + timedelta(minutes=i))
        )

    assert [r.id for r in store.list()] == [made[i].id for i in (3, 2, 1, 0)]
    assert [r.id for r in store.list([JobState.RUNNING])] == [made[2].id, made[0].id]
    assert [r.id for r in store.list([JobState.SUCCEEDED, JobState.FAILED])] == [
        made[3].id,
        made[1].id,
    ]
    assert store.list([JobState.CANCELLED]) == []
    assert store.list([]) == []


def test_jobs_created_at_the_same_instant_list_in_id_order(
    store: JobStore, request: pytest.FixtureRequest
) -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    ids = [store.create_if_absent(record(f"k{i}", created_at=at))[0].id for i in range(5)]

    assert [r.id for r in store.list()] == sorted(ids)
    assert [r.id for r in store.list_open()] == sorted(ids)


def test_list_follows_state_changes(store: JobStore) -> None:
    stored, _ = store.create_if_absent(record("k"))
    store.update(stored.evolve(state=JobState.RUNNING))

    assert store.list([JobState.ACCEPTED]) == []
    assert [r.id for r in store.list([JobState.RUNNING])] == [stored.id]


def test_list_open_returns_unfinished_unreleased_or_model_owed_jobs_newest_first(
    store: JobStore,
) -> None:
    owed_id = job_id_for("train", "succeeded-model-owed")
    cases = {
        "accepted": (JobState.ACCEPTED, ComputeState.NONE, [], True),
        "running": (JobState.RUNNING, ComputeState.LIVE, [], True),
        "succeeded-still-live": (JobState.SUCCEEDED, ComputeState.LIVE, [], True),
        "succeeded-model-owed": (
            JobState.SUCCEEDED,
            ComputeState.RELEASED,
            [f"runs/{owed_id}/outputs/model/weights.pt"],
            True,
        ),
        "failed-never-rented": (JobState.FAILED, ComputeState.NONE, [], False),
        "cancelled-released": (JobState.CANCELLED, ComputeState.RELEASED, [], False),
    }
    base = datetime(2024, 1, 1, tzinfo=UTC)
    ids = {}
    for i, (key, (state, compute, outputs, _)) in enumerate(cases.items()):
        stored, _ = store.create_if_absent(
            record(
                key,
                state=state,
                compute_state=compute,
                outputs=outputs,
                created_at=base + timedelta(minutes=i),
            )
        )
        ids[key] = stored.id

    expected = [ids[k] for k, c in reversed(cases.items()) if c[3]]
    assert [r.id for r in store.list_open()] == expected
    assert all(r.open for r in store.list_open())


def test_a_job_leaves_list_open_once_finished_and_released(store: JobStore) -> None:
    stored, _ = store.create_if_absent(record("k", compute_state=ComputeState.LIVE))
    finished = store.update(stored.evolve(state=JobState.SUCCEEDED))
    assert [r.id for r in store.list_open()] == [stored.id]

    store.update(finished.evolve(compute_state=ComputeState.RELEASED))

    assert store.list_open() == []
    assert [r.id for r in store.list()] == [stored.id]


def test_a_closed_job_that_opens_again_is_back_in_list_open(
    store: JobStore, request: pytest.FixtureRequest
) -> None:
    stored, _ = store.create_if_absent(record("k", state=JobState.FAILED))
    assert store.list_open() == []

    store.update(stored.evolve(compute_state=ComputeState.LIVE))

    assert [r.id for r in store.list_open()] == [stored.id]


# --- every field ---------------------------------------------------------------------------


def full_record() -> JobRecord:
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    return record(
        "every-field",
        state=JobState.SUCCEEDED,
        reason="done ü 模型 'quoted' \"double\"",
        compute_state=ComputeState.RELEASED,
        backend="local",
        handle={"pid": 1234, "slot": "0", "nested": {"a": [1, 2]}},
        created_at=at,
        updated_at=at + timedelta(seconds=1),
        compute_requested_at=at + timedelta(seconds=2),
        live_at=at + timedelta(seconds=3),
        started_at=at + timedelta(seconds=4),
        finished_at=at + timedelta(seconds=64),
        released_at=at + timedelta(seconds=70),
        exit_code=0,
        metrics={"loss": 0.125, "accuracy": 0.9},
        outputs=["runs/x/outputs/a.csv"],
        model_version="churn:3",
        teardown_attempts=2,
    )


def test_a_record_round_trips_every_field_through_json() -> None:
    original = full_record()

    again = JobRecord.from_json(original.to_json())

    assert again == original
    assert again.runtime_s == 60.0
    assert again.held_s == 68.0


def test_a_record_round_trips_every_field_through_the_store(store: JobStore) -> None:
    stored, _ = store.create_if_absent(full_record())

    assert store.get(stored.id) == stored
    assert store.list() == [stored]
    assert stored == JobRecord(
        **{**full_record().__dict__, "updated_at": stored.updated_at, "version": 1}
    )


# --- races ---------------------------------------------------------------------------------


def test_racing_creates_of_one_key_create_exactly_once(store: JobStore) -> None:
    def create_many(_: int) -> list[bool]:
        return [store.create_if_absent(record("same-event"))[1] for _ in range(100)]

    outcomes = [created for batch in in_threads(create_many) for created in batch]

    assert len(outcomes) == THREADS * 100
    assert outcomes.count(True) == 1
    assert [r.key for r in store.list()] == ["same-event"]
    assert store.get(job_id_for("train", "same-event")).version == 1


def test_racing_compare_and_swap_increments_lose_no_update(store: JobStore) -> None:
    stored, _ = store.create_if_absent(record("counter"))
    per_thread = 25

    def increment(_: int) -> int:
        conflicts = 0
        for _ in range(per_thread):
            while True:
                current = store.get(stored.id)
                try:
                    store.update(current.evolve(teardown_attempts=current.teardown_attempts + 1))
                    break
                except Conflict:
                    conflicts += 1
        return conflicts

    in_threads(increment)

    final = store.get(stored.id)
    assert final.teardown_attempts == THREADS * per_thread
    assert final.version == 1 + THREADS * per_thread

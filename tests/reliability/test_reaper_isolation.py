"""One job's trouble stays with that job: a reaper pass goes on to the others.

An unexpected error on one job is logged and becomes an action line; a definite problem of that
job (a result it cannot read, a record the store cannot save) fails that job with the reason; a
service that is only unavailable skips the job for this pass, and the next pass handles it.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests

from drive import finish, spec_for, write_script
from ephemerid import names
from ephemerid.artifacts import put_bytes
from ephemerid.azure.connection import storage_connection
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for, utcnow
from ephemerid.service import Service
from ephemerid.spec import validate_spec
from ephemerid.store.table import TableJobStore
from outage import Outage


class JobOutage(Outage):
    """An outage for one job only: requests naming ``job_id`` (and of ``methods``) fail."""

    def __init__(self, job_id: str, methods: tuple[str, ...]) -> None:
        super().__init__()
        self.job_id, self.methods = job_id, methods

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self.job_id in str(request.url) and request.method in self.methods:
            return super().send(request, **kwargs)
        status, self.status = self.status, None
        try:
            return super().send(request, **kwargs)
        finally:
            self.status = status


def running(key: str, *, backend: str = "local", **params: object) -> JobRecord:
    """A running job whose compute is gone: the reaper fails it unless a result is there."""
    spec = validate_spec(
        {"kind": "train", "name": "m", "code": "/c", "entrypoint": "t.py", "params": params}
    )
    return JobRecord(
        id=job_id_for("train", key),
        key=key,
        spec=spec,
        source="test",
        backend=backend,
        state=JobState.RUNNING,
        compute_state=ComputeState.LIVE,
        live_at=utcnow(),
    )


def stored(service: Service, record: JobRecord) -> JobRecord:
    return service.store.create_if_absent(record)[0]


def test_a_result_with_a_bad_date_fails_that_job_and_the_pass_reaps_the_others(
    service: Service,
) -> None:
    dead = stored(service, running("compute-died"))
    bad = stored(service, running("bad-date"))
    result = {"contract": 1, "job_id": bad.id, "status": "succeeded", "started_at": "not-a-date"}
    key = names.run_key(bad.id, names.RESULT_FILE)
    put_bytes(service.artifacts, key, json.dumps(result).encode())

    reap(service)

    failed = service.get(bad.id)
    assert failed.state is JobState.FAILED
    assert "started_at" in failed.reason and names.RESULT_FILE in failed.reason
    assert service.get(dead.id).state is JobState.FAILED
    assert service.get(dead.id).reason == "compute exited without writing a result"


def test_a_job_on_a_backend_no_longer_configured_does_not_stop_the_pass(service: Service) -> None:
    orphan = stored(service, running("on-a-removed-backend", backend="azure-vm"))
    dead = stored(service, running("compute-died"))

    actions = reap(service)

    assert service.get(dead.id).state is JobState.FAILED
    assert service.get(dead.id).compute_state is ComputeState.RELEASED
    assert service.get(orphan.id).state is JobState.RUNNING  # unexpected: left as it was
    assert any(orphan.id in line and "azure-vm" in line for line in actions), actions
    left = service.get(orphan.id)  # the test's own cleanup cannot reach a backend that is gone
    service.store.update(left.evolve(state=JobState.FAILED, compute_state=ComputeState.RELEASED))


def test_a_job_whose_store_is_unavailable_is_skipped_this_pass_not_failed(
    azurite_connection: str, service: Service
) -> None:
    first, second = running("unavailable-now"), running("compute-died")
    outage = JobOutage(first.id, ("PUT", "MERGE", "PATCH", "POST"))
    connection = storage_connection({"EPHEMERID_STORAGE": azurite_connection})
    store = TableJobStore(connection, f"t{uuid.uuid4().hex}", **outage.client_options())
    on_table = Service(store, service.artifacts, service.backends, service.settings)
    try:
        for record in (first, second):
            store.create_if_absent(record)
        outage.answer(503)

        actions = reap(on_table)

        assert store.get(first.id).state is JobState.RUNNING  # transient: not failed
        assert any(first.id in line and "skipped" in line for line in actions), actions
        assert store.get(second.id).state is JobState.FAILED
        outage.end()
        reap(on_table)  # the next pass handles it
        assert store.get(first.id).state is JobState.FAILED
    finally:
        store.close()


def test_a_result_too_large_to_record_fails_that_job_saying_so(table_service: Service) -> None:
    big = stored(table_service, running("nearly-full", notes="x" * 440_000))
    dead = stored(table_service, running("compute-died"))
    outputs = [names.run_key(big.id, f"outputs/{'o' * 200}-{n}") for n in range(150)]
    metrics = {f"metric-{'m' * 100}-{n}": 1.0 for n in range(300)}
    result = {"contract": 1, "job_id": big.id, "status": "succeeded", "outputs": outputs}
    result["metrics"] = metrics
    put_bytes(
        table_service.artifacts,
        names.run_key(big.id, names.RESULT_FILE),
        json.dumps(result).encode(),
    )

    reap(table_service)

    failed = table_service.get(big.id)
    assert failed.state is JobState.FAILED
    assert "too large" in failed.reason and big.id in failed.reason
    assert table_service.get(dead.id).state is JobState.FAILED


def test_a_waiting_job_that_cannot_start_does_not_keep_the_others_waiting(
    service: Service, code_dir: Path
) -> None:
    spec = spec_for(code_dir, write_script(code_dir, "print('placed at last')\n"))
    orphan = JobRecord(  # the oldest waiting job, on a backend this service no longer has
        id=job_id_for("train", "waiting-on-a-removed-backend"),
        key="waiting-on-a-removed-backend",
        spec=spec,
        source="test",
        backend="azure-vm",
        state=JobState.WAITING_FOR_CAPACITY,
        created_at=utcnow() - timedelta(hours=1),
    )
    stored(service, orphan)
    waiting = JobRecord(
        id=job_id_for("train", "waiting"),
        key="waiting",
        spec=spec,
        source="test",
        backend="local",
        state=JobState.WAITING_FOR_CAPACITY,
    )
    stored(service, waiting)
    service.staging.write_launch(waiting, service.staging.check(spec))

    actions = reap(service)

    assert any(waiting.id in line for line in actions), actions
    assert finish(service, waiting.id).state is JobState.SUCCEEDED
    assert service.get(orphan.id).state is JobState.WAITING_FOR_CAPACITY


def test_a_stray_whose_job_cannot_be_read_now_is_kept_and_the_others_torn_down(
    azurite_connection: str, service: Service
) -> None:
    kept, gone = running("unreadable-now"), running("unknown")
    jobs = service.settings.home / "compute" / "jobs"
    for record in (kept, gone):
        (jobs / record.id).mkdir(parents=True)  # compute the backend holds: a scratch folder
    outage = JobOutage(kept.id, ("GET",))
    connection = storage_connection({"EPHEMERID_STORAGE": azurite_connection})
    store = TableJobStore(connection, f"t{uuid.uuid4().hex}", **outage.client_options())
    on_table = Service(store, service.artifacts, service.backends, service.settings)
    try:
        outage.answer(503)

        actions = reap(on_table)

        assert (jobs / kept.id).is_dir()  # its job may be running: never torn down on a guess
        assert not (jobs / gone.id).exists()
        assert any(kept.id in line for line in actions), actions
    finally:
        store.close()

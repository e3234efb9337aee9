"""The job's whole life, driven through the pure changes with no store and no compute."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from ephemerid import transitions as t
from ephemerid.compute import Handle
from ephemerid.contract import Result, RunStatus
from ephemerid.record import ComputeState, JobRecord, JobState
from ephemerid.spec import JobSpec


def record() -> JobRecord:
    spec = JobSpec.model_validate({"kind": "train", "code": "az://code/app", "entrypoint": "a.py"})
    return JobRecord(id="train-000000000001", key="k", spec=spec, source="test", backend="local")


def handle(price: float | None = 1.8) -> Handle:
    return Handle("local", "train-000000000001", {"pid": 7}, sku="T4", price_per_hour=price)


def test_a_job_goes_from_accepted_to_succeeded_and_released() -> None:
    job = t.apply(record(), t.to_provisioning)
    assert (job.state, job.compute_state) == (JobState.PROVISIONING, ComputeState.REQUESTED)
    job = t.apply(job, t.live(handle()))
    assert (job.state, job.compute_state, job.handle) == (
        JobState.RUNNING,
        ComputeState.LIVE,
        {"pid": 7},
    )
    assert (job.sku, job.price_per_hour) == ("T4", 1.8)
    result = Result.loads(
        json.dumps(
            {
                "contract": 1,
                "job_id": job.id,
                "status": "succeeded",
                "exit_code": 0,
                "started_at": "2026-01-01T00:00:00+00:00",
                "finished_at": "2026-01-01T00:01:00+00:00",
                "metrics": {"loss": 0.1},
                "outputs": ["runs/x/outputs/model/m.pt"],
            }
        ).encode()
    )
    job = t.apply(job, t.finished(result))
    assert (job.state, job.exit_code, job.runtime_s, job.metrics) == (
        JobState.SUCCEEDED,
        0,
        60.0,
        {"loss": 0.1},
    )
    job = t.apply(job, t.released)
    assert job.compute_state is ComputeState.RELEASED and job.released_at is not None
    assert not job.open


def test_each_step_applies_once_so_a_redelivery_changes_nothing() -> None:
    started = t.apply(record(), t.to_provisioning)
    assert t.to_provisioning(started) is None  # a second caller loses: it does not provision
    done = t.apply(started, t.ended(JobState.CANCELLED, "by user"))
    assert t.ended(JobState.FAILED, "late")(done) is None
    assert t.finished(Result(job_id=done.id, status=RunStatus.SUCCEEDED))(done) is None
    released = t.apply(done, t.released)
    assert t.released(released) is None


def test_no_capacity_waits_with_the_reason_and_a_time_to_try_again() -> None:
    job = t.apply(t.apply(record(), t.to_provisioning), t.waiting("no T4 in eastus", 30))
    assert (job.state, job.compute_state) == (JobState.WAITING_FOR_CAPACITY, ComputeState.NONE)
    assert job.reason == "no T4 in eastus"
    assert job.next_try_at is not None and job.waiting_since is not None
    assert t.waiting("again")(job) is None  # only a provisioning job starts waiting
    assert t.apply(job, t.to_provisioning).state is JobState.PROVISIONING


def test_every_run_status_ends_the_job_in_a_terminal_state() -> None:
    job = t.apply(t.apply(record(), t.to_provisioning), t.live(handle()))
    ends = {s: t.apply(job, t.finished(Result(job_id=job.id, status=s))).state for s in RunStatus}
    assert ends == {
        RunStatus.SUCCEEDED: JobState.SUCCEEDED,
        RunStatus.FAILED: JobState.FAILED,
        RunStatus.TIMED_OUT: JobState.TIMED_OUT,
        RunStatus.EVICTED: JobState.FAILED,
    }


def test_an_evicted_job_is_requeued_only_once_its_compute_is_released() -> None:
    job = t.apply(t.apply(record(), t.to_provisioning), t.live(handle()))
    assert t.requeued(job) is None  # compute still live: the teardown comes first
    job = t.apply(t.apply(job, t.released), t.requeued)
    assert (job.state, job.compute_state, job.evictions) == (
        JobState.ACCEPTED,
        ComputeState.NONE,
        1,
    )
    assert [c["why"] for c in job.earlier_compute] == ["evicted"]
    assert job.handle == {} and job.price_per_hour is None


def test_a_job_cancelled_while_provisioning_still_owes_the_compute_it_got() -> None:
    job = t.apply(record(), t.to_provisioning)
    job = t.apply(job, t.ended(JobState.CANCELLED, "by user"))
    job = t.apply(job, t.live(handle()))  # the provision finished after the cancel
    assert (job.state, job.compute_state) == (JobState.CANCELLED, ComputeState.LIVE)
    assert job.open  # the reaper and release still owe its teardown


def test_an_end_without_a_result_keeps_the_start_and_metrics_the_runner_reported() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    running = t.apply(t.apply(record(), t.to_provisioning), t.live(handle()))

    cancelled = t.apply(
        running, t.ended(JobState.CANCELLED, "cancelled by user", started, {"loss": 0.25})
    )

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.started_at == started
    assert cancelled.metrics == {"loss": 0.25}
    assert cancelled.runtime_s is not None and cancelled.runtime_s > 0
    again = t.apply(
        cancelled.evolve(state=JobState.RUNNING, metrics={"loss": 0.1}),
        t.ended(JobState.FAILED, "lost", datetime(2027, 1, 1, tzinfo=UTC), {"loss": 9.0}),
    )
    assert (again.started_at, again.metrics) == (started, {"loss": 0.1})  # what it had stays

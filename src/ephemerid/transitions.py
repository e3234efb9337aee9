"""The job's whole life as pure functions: each takes the stored record and returns the change.

A change is the fields to set, or None when the record is already past that step (a redelivery,
a lost race, a reaper arriving after the event). ``Service`` applies them through one
compare-and-swap loop; a test can drive a record through its life with ``apply`` and no store.

    ACCEPTED -> PROVISIONING -> RUNNING -> SUCCEEDED | FAILED | TIMED_OUT | CANCELLED
                     |  ^
                     v  |  (no capacity: waits, then tries again)
             WAITING_FOR_CAPACITY

and separately compute: none -> requested -> live -> released.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from ephemerid.compute import Handle
from ephemerid.contract import Result, RunStatus, first_outputs
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow

Change = Callable[[JobRecord], dict[str, Any] | None]

# What a record keeps of a result, whatever the job wrote (the whole is in the job's artifacts):
# the first outputs (contract.OUTPUTS_LISTED), the first metrics by name, and the reason's start.
METRICS_KEPT = 200
REASON_KEPT = 4000

RESULT_STATES: Mapping[RunStatus, JobState] = {
    RunStatus.SUCCEEDED: JobState.SUCCEEDED,
    RunStatus.FAILED: JobState.FAILED,
    RunStatus.TIMED_OUT: JobState.TIMED_OUT,
    RunStatus.EVICTED: JobState.FAILED,  # only a job already ended gets here: see complete()
}


def apply(job: JobRecord, change: Change) -> JobRecord:
    """``job`` after ``change`` (unchanged when the change does not apply): no store needed."""
    values = change(job)
    return job if values is None else job.evolve(**values)


def to_provisioning(job: JobRecord) -> dict[str, Any] | None:
    """An accepted or waiting job asks for compute; exactly one caller wins this step."""
    if job.state not in (JobState.ACCEPTED, JobState.WAITING_FOR_CAPACITY):
        return None
    return {
        "state": JobState.PROVISIONING,
        "compute_state": ComputeState.REQUESTED,
        "compute_requested_at": utcnow(),
        "reason": "",
    }


def waiting(reason: str, retry_after_s: float | None = None) -> Change:
    """No capacity now: the job waits (and says why) instead of failing."""

    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state is not JobState.PROVISIONING:
            return None
        now = utcnow()
        return {
            "state": JobState.WAITING_FOR_CAPACITY,
            "compute_state": ComputeState.NONE,
            "compute_requested_at": None,
            "reason": reason,
            "waiting_since": job.waiting_since or now,
            "next_try_at": now + timedelta(seconds=retry_after_s) if retry_after_s else None,
        }

    return change


def held_by_budget(reason: str, next_try_at: datetime) -> Change:
    """A budget has no room for an accepted or waiting job: it waits (saying which budget, what
    is spent and what it could cost) and is looked at again at ``next_try_at``."""

    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state not in (JobState.ACCEPTED, JobState.WAITING_FOR_CAPACITY):
            return None
        return {
            "state": JobState.WAITING_FOR_CAPACITY,
            "reason": reason,
            "waiting_since": job.waiting_since or utcnow(),
            "next_try_at": next_try_at,
        }

    return change


def live(handle: Handle) -> Change:
    """The backend started the runner: record the handle and what the compute costs."""

    def change(job: JobRecord) -> dict[str, Any] | None:
        values: dict[str, Any] = {"handle": handle.data, "next_try_at": None}
        values.update(sku=handle.sku, spot=handle.spot, price_per_hour=handle.price_per_hour)
        values.update(billed_tail_s=handle.billed_tail_s)
        if job.compute_state is ComputeState.REQUESTED:
            values.update(compute_state=ComputeState.LIVE, live_at=utcnow())
        if job.compute_state is ComputeState.RELEASED:  # cancelled while it was provisioned
            values.update(compute_state=ComputeState.LIVE)
        if job.state is JobState.PROVISIONING:
            values["state"] = JobState.RUNNING
        return values

    return change


def requeued(job: JobRecord) -> dict[str, Any] | None:
    """An evicted job whose compute is released goes back to ACCEPTED for new compute."""
    if job.state.terminal or job.compute_state is not ComputeState.RELEASED:
        return None
    return {
        "state": JobState.ACCEPTED,
        "reason": f"evicted by Azure (eviction {job.evictions + 1}): resuming on new compute",
        "compute_state": ComputeState.NONE,
        "handle": {},
        "earlier_compute": [*job.earlier_compute, job.rental("evicted")],
        "evictions": job.evictions + 1,
        "compute_requested_at": None,
        "live_at": None,
        "released_at": None,
        "waiting_since": None,
        "next_try_at": None,
        "price_per_hour": None,
        "billed_tail_s": 0.0,
    }


def unplaced(job: JobRecord) -> dict[str, Any] | None:
    """Compute the platform gave up before the job ran (a quota failure), released: the job
    goes back to ACCEPTED to be placed again, still waiting since it first waited."""
    if job.state.terminal or job.compute_state is not ComputeState.RELEASED:
        return None
    return {
        "state": JobState.ACCEPTED,
        "reason": "the platform could not place its compute (capacity or quota): placing it again",
        "compute_state": ComputeState.NONE,
        "handle": {},
        "earlier_compute": [*job.earlier_compute, job.rental("not placed")],
        "compute_requested_at": None,
        "live_at": None,
        "released_at": None,
        "waiting_since": job.waiting_since or utcnow(),
        "price_per_hour": None,
        "billed_tail_s": 0.0,
    }


def adopted(handle: Handle) -> Change:
    """``live(handle)``, for a job still provisioning only (a provision that did finish wins):
    the compute a provision made after its caller died, found again by the job id."""
    change = live(handle)
    return lambda job: change(job) if job.state is JobState.PROVISIONING else None


def released(job: JobRecord) -> dict[str, Any] | None:
    """Teardown is confirmed: the job is done for the bill."""
    if job.compute_state is ComputeState.RELEASED:
        return None
    return {"compute_state": ComputeState.RELEASED, "released_at": utcnow()}


def teardown_owed(job: JobRecord) -> dict[str, Any] | None:
    """Teardown was tried and not confirmed: count it; the reaper tries again."""
    return {"teardown_attempts": job.teardown_attempts + 1}


def ended(
    state: JobState,
    reason: str,
    started_at: datetime | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Change:
    """An unfinished job ends in terminal ``state`` (cancel, fail, time out) with ``reason``.

    With no result to say so, ``started_at`` and ``metrics`` are what its runner reported while
    it ran: the job keeps them, so its code's time is its runtime (not idle) and its metrics stay.
    """

    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state.terminal:
            return None
        values: dict[str, Any] = {
            "state": state,
            "reason": _kept(reason),
            "finished_at": job.finished_at or utcnow(),
        }
        if job.started_at is None and started_at is not None:
            values["started_at"] = started_at
        if not job.metrics and metrics:
            values["metrics"] = dict(sorted(metrics.items())[:METRICS_KEPT])
        return values

    return change


def not_launched(reason: str) -> Change:
    """The job's launch cannot be written: it fails before any compute is asked for."""

    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state not in (JobState.ACCEPTED, JobState.WAITING_FOR_CAPACITY):
            return None
        return {"state": JobState.FAILED, "reason": _kept(reason), "finished_at": utcnow()}

    return change


def finished(result: Result) -> Change:
    """The runner's result: how the job ended, when its code ran, its metrics and outputs.

    The record keeps a summary, small whatever the job wrote: the count and bytes of its outputs
    and the first of them (all are in runs/<job>/outputs.json), and at most METRICS_KEPT metrics.
    """

    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state.terminal:
            return None
        count = len(result.outputs) if result.output_count is None else result.output_count
        return {
            "state": RESULT_STATES[result.status],
            "reason": _kept(result.reason),
            "exit_code": result.exit_code,
            "started_at": result.started_at,
            "finished_at": result.finished_at or utcnow(),
            "metrics": dict(sorted(result.metrics.items())[:METRICS_KEPT]),
            "outputs": first_outputs(job.id, result.outputs),
            "output_count": count,
            "output_bytes": result.output_bytes,
            "setup_s": result.setup_s,
        }

    return change


def _kept(reason: str) -> str:
    return reason if len(reason) <= REASON_KEPT else reason[: REASON_KEPT - 1] + "…"


def model_registered(ref: str) -> Change:
    return lambda job: {"model_version": ref}


def parent_started(job: JobRecord) -> dict[str, Any] | None:
    """A sweep or a fanned-out batch job made its first children: it runs (it rents nothing)."""
    if job.state is not JobState.ACCEPTED:
        return None
    return {"state": JobState.RUNNING, "started_at": utcnow()}

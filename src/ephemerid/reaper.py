"""The reaper: the timer-driven second line of teardown.

It finishes what events missed: a result nobody handled, compute that died without a result (a
spot VM evicted with no notice resumes elsewhere), jobs past ``max_runtime``, lost heartbeats,
provisioning that never finished, teardowns still owed, and compute a backend holds whose job is
terminal or unknown. Every action is a
compare-and-swap through the service, so a reaper racing an event handler is harmless.

One job's trouble stays with that job: each job is handled on its own, a service that is only
unavailable skips it for this pass (the next pass tries again), and an unexpected error is logged
and reported as an action line while the pass goes on to the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from ephemerid.compute import ComputeBackend, ComputeStatus, Handle
from ephemerid.costs.bill import bill
from ephemerid.errors import EphemeridError, NotFound, Unavailable
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow
from ephemerid.service import Service

ACCEPTED_STALE = timedelta(seconds=60)
log = logging.getLogger("ephemerid.reaper")


def reap(service: Service, now: datetime | None = None) -> list[str]:
    """One pass; returns what it did, one line per action."""
    now = now or utcnow()
    actions: list[str] = []
    for job in service.list_open():
        actions.extend(_isolated(job.id, partial(_reap_one, service, job, now)))
    actions.extend(_isolated("strays", partial(strays, service, now)))
    actions.extend(_isolated("waiting jobs", partial(_dispatch, service)))
    return actions


def _isolated(what: str, step: Callable[[], list[str]]) -> list[str]:
    """``step``'s action lines; what goes wrong in it becomes one line, and the pass goes on."""
    try:
        return step()
    except Unavailable as exc:  # transient: never a reason to fail the job
        log.warning("reaper: %s skipped this pass: %s", what, exc)
        return [f"{what}: skipped this pass, to be tried again: {exc}"]
    except Exception as exc:
        log.exception("reaper: %s failed unexpectedly", what)
        return [f"{what}: unexpected error, left for the next pass: {type(exc).__name__}: {exc}"]


def _reap_one(service: Service, job: JobRecord, now: datetime) -> list[str]:
    if job.makes_jobs:  # a sweep or fanned-out job holds no compute: its step finds what was missed
        after = service.advance_parent(job.id)
        return [f"{job.id}: moved on -> {after.state.value}"] if after.state.terminal else []
    if job.parent and not job.state.terminal and service.get(job.parent).state.terminal:
        service.advance_parent(job.parent)  # a child its ended parent has not ended yet
        return [f"{job.id}: its parent {job.parent} ended -> {service.get(job.id).state.value}"]
    if job.state is JobState.WAITING_FOR_CAPACITY:
        return []
    if not job.state.terminal:
        return _check_active(service, job, now)
    if job.compute_state in (ComputeState.REQUESTED, ComputeState.LIVE):
        released = service.release(job)
        ok = released.compute_state is ComputeState.RELEASED
        return [f"{job.id}: teardown owed -> {'released' if ok else 'still owed'}"]
    if job.model_owed and service.register_model(job).model_version:
        return [f"{job.id}: registered its model"]
    return []


def strays(service: Service, now: datetime | None = None) -> list[str]:
    """Give back compute a backend holds whose job is terminal or unknown, or that is past its
    own deadline whatever its job's record says (a record lost or from another store); what
    was done.

    A piece whose job cannot be read now is kept (never torn down on a guess) and the others go on.
    """
    now = now or utcnow()
    actions = []
    for name, backend in service.backends.items():
        try:
            owned = backend.list_owned()
        except EphemeridError as exc:  # the next pass tries again
            actions.append(f"{name}: cannot list its compute now: {exc}")
            continue
        for handle in owned:
            step = partial(_stray, service, name, backend, handle, now)
            actions.extend(_isolated(handle.job_id, step))
    return actions


def _stray(
    service: Service, name: str, backend: ComputeBackend, handle: Handle, now: datetime
) -> list[str]:
    try:
        job: JobRecord | None = service.get(handle.job_id)
    except NotFound:
        job = None
    overdue = handle.deadline is not None and handle.deadline < now
    if job is not None and not job.state.terminal and not overdue:
        return []
    try:
        gone = backend.teardown(handle)
    except EphemeridError:
        gone = False
    owner = f"job {job.state.value}" if job else "no job"
    if overdue:
        owner += f", past its deadline {handle.deadline:%Y-%m-%dT%H:%M:%SZ}"
    done = "torn down" if gone else "teardown still owed"
    return [f"{handle.job_id}: {name} compute with {owner} -> {done}"]


def _dispatch(service: Service) -> list[str]:
    return [f"{job.id}: waiting job -> {job.state.value}" for job in service.dispatch_waiting()]


def _check_active(service: Service, job: JobRecord, now: datetime) -> list[str]:
    settings = service.settings
    if service.has_result(job.id):
        return [f"{job.id}: result found -> {service.complete(job.id).state.value}"]
    if job.state is JobState.ACCEPTED:
        if now - job.created_at > ACCEPTED_STALE:
            return [f"{job.id}: accepted but never started -> {service.start(job.id).state.value}"]
        return []
    if job.state is JobState.PROVISIONING:
        started = job.compute_requested_at or job.updated_at
        if (now - started).total_seconds() > settings.provision_timeout_s:
            if service.adopt(job).state is JobState.RUNNING:  # its VM was made after all
                return [f"{job.id}: provisioning outlived its caller; found its compute -> RUNNING"]
            return [_end(service, job, JobState.FAILED, "provisioning did not finish in time")]
        return []
    status = service.poll(job)
    if status is ComputeStatus.UNPLACED:
        return [f"{job.id}: its compute could not be placed -> {service.unplaced(job).state.value}"]
    if status is ComputeStatus.GONE:  # a spot VM gone so was evicted: see Service.lost
        after = service.lost(job.id)
        return [f"{job.id}: compute gone without a result -> {after.state.value} ({after.reason})"]
    if (spent := _past_max_cost(job, now)) is not None:
        return [_end(service, job, JobState.FAILED, spent)]
    live = job.live_at or job.updated_at
    deadline = live + timedelta(
        seconds=job.spec.compute.max_runtime + settings.grace_s + settings.heartbeat_timeout_s
    )
    if now > deadline:
        reason = f"ran past max_runtime of {job.spec.compute.max_runtime}s (reaper)"
        return [_end(service, job, JobState.TIMED_OUT, reason)]
    if status is ComputeStatus.STARTING:  # queued or booting: no runner to beat yet
        return []
    beat = service.last_heartbeat(job.id) or live
    if (now - max(beat, live)).total_seconds() > settings.heartbeat_timeout_s:
        reason = f"lost heartbeat: none for over {settings.heartbeat_timeout_s:.0f}s"
        return [_end(service, job, JobState.FAILED, reason)]
    return []


def _past_max_cost(job: JobRecord, now: datetime) -> str | None:
    """Why a job whose cost so far reached its ``compute.max_cost`` is stopped; None if not."""
    limit = job.spec.compute.max_cost
    if limit is None:
        return None
    cost = bill(job, now).total()
    if cost < limit:
        return None
    return f"stopped: its cost so far ${cost:.4f} reached compute.max_cost ${limit:g} (reaper)"


def _end(service: Service, job: JobRecord, state: JobState, reason: str) -> str:
    ended = service.end(job.id, state, reason)
    return f"{job.id}: {reason} -> {ended.state.value}, compute {ended.compute_state.value}"

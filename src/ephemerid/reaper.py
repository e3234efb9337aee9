"""The reaper: the timer-driven second line of teardown.

It finishes what events missed: a result nobody handled, compute that died without a result,
jobs past ``max_runtime``, lost heartbeats, provisioning that never finished, teardowns still
owed, and compute a backend holds whose job is terminal or unknown. Every action is a
compare-and-swap through the service, so a reaper racing an event handler is harmless.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ephemerid.compute import ComputeStatus
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow
from ephemerid.service import Service

ACCEPTED_STALE = timedelta(seconds=60)


def reap(service: Service, now: datetime | None = None) -> list[str]:
    """One pass; returns what it did, one line per action."""
    now = now or utcnow()
    actions: list[str] = []
    for job in service.list_open():
        if job.state is JobState.WAITING_FOR_CAPACITY:
            continue
        if not job.state.terminal:
            actions.extend(_check_active(service, job, now))
        elif job.compute_state in (ComputeState.REQUESTED, ComputeState.LIVE):
            released = service.release(job)
            ok = released.compute_state is ComputeState.RELEASED
            actions.append(f"{job.id}: teardown owed -> {'released' if ok else 'still owed'}")
        elif job.model_owed and service.register_model(job).model_version:
            actions.append(f"{job.id}: registered its model")
    actions.extend(service.strays(now))
    for job in service.dispatch_waiting():
        actions.append(f"{job.id}: waiting job -> {job.state.value}")
    return actions


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
    if status is ComputeStatus.GONE:
        return [_end(service, job, JobState.FAILED, "compute exited without writing a result")]
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


def _end(service: Service, job: JobRecord, state: JobState, reason: str) -> str:
    ended = service.end(job.id, state, reason)
    return f"{job.id}: {reason} -> {ended.state.value}, compute {ended.compute_state.value}"

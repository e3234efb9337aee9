"""Drive jobs until they are settled: terminal, and their compute given back.

The one "wait for the end" loop, shared by the tests and by ``eph submit``/``eph logs -f``
(dramatiq's ``StubBroker.join``). Each tick it does what the event loop would: a job whose
``result.json`` has landed is completed, and a job waiting for capacity gets a dispatch. What
else a caller needs each tick (a reaper pass, streaming the log) goes in ``on_tick``.

Only product modules are imported here, nothing Azure: the CLI uses it without the extras.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ephemerid.errors import EphemeridError
from ephemerid.record import ComputeState, JobRecord, JobState
from ephemerid.service import Service

SETTLED_COMPUTE = (ComputeState.NONE, ComputeState.RELEASED)  # what JobRecord.settled allows


class NotSettled(EphemeridError, TimeoutError):
    """A job was still running, or its compute still held, when the wait ran out."""


def settled(job: JobRecord) -> bool:
    """Over for the user and for the bill: terminal, with no compute held."""
    return job.settled


def settle(
    service: Service,
    job_ids: list[str],
    *,
    timeout: float | None,
    on_tick: Callable[[], None] | None = None,
    poll_s: float = 0.05,
    drive: bool = True,
) -> list[JobRecord]:
    """Drive ``job_ids`` until each is settled; their records, in the order given.

    Each tick: ``on_tick()`` first, then a job whose result has landed is completed and, if one
    waits for capacity, waiting jobs are dispatched. ``timeout`` None waits for ever (the CLI,
    which Ctrl-C ends); otherwise NotSettled names each job not settled and its state.
    ``drive`` False only watches: something else (the local agent) moves the jobs on.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if on_tick is not None:
            on_tick()
        jobs = [service.get(job_id) for job_id in job_ids]
        if all(settled(job) for job in jobs):
            return jobs
        if deadline is not None and time.monotonic() > deadline:
            raise NotSettled(_not_settled(jobs, timeout or 0.0))
        if drive:
            _tick(service, [job for job in jobs if not settled(job)])
        time.sleep(poll_s)


def _tick(service: Service, pending: list[JobRecord]) -> None:
    """What the event loop would do for these jobs now."""
    waiting = False
    for job in pending:
        if service.has_result(job.id):
            service.complete(job.id)  # repeats safely: it also retries an owed teardown
        elif job.state is JobState.WAITING_FOR_CAPACITY:
            waiting = True
    if waiting:
        service.dispatch_waiting()  # as the reaper's timer does


def _not_settled(jobs: list[JobRecord], timeout: float) -> str:
    open_ = [
        f"job {job.id} is {job.state.value} with compute {job.compute_state.value}"
        + (f" ({job.reason})" if job.reason else "")
        for job in jobs
        if not settled(job)
    ]
    return f"not settled after {timeout:.0f}s: {'; '.join(open_)}"

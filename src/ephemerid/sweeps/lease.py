"""A sweep's lease: one process steps a sweep at a time (``ephemerid.sweeps.controller``).

A step takes the lease by compare-and-swap on the sweep's record; an event that finds it held
counts a poke, for the holder to step again before it lets go. A lease whose holder died runs
out after ``LEASE_S``; a long step renews it as it goes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from ephemerid.record import JobRecord, utcnow

LEASE_S = 60.0
Transition = Callable[[str, Callable[[JobRecord], dict[str, Any] | None]], tuple[JobRecord, bool]]


def take_lease(transition: Transition, sweep_id: str) -> str | None:
    """This step's lease id; None when another holds it (it is poked, to step again)."""
    lease = uuid.uuid4().hex
    now = utcnow()

    def take(job: JobRecord) -> dict[str, Any] | None:
        sweep = job.sweep or {}
        held = sweep.get("lease")
        if held and datetime.fromisoformat(held["until"]) > now and held["id"] != lease:
            return {"sweep": {**sweep, "pokes": sweep.get("pokes", 0) + 1}}
        until = (now + timedelta(seconds=LEASE_S)).isoformat()
        return {"sweep": {**sweep, "lease": {"id": lease, "until": until}}}

    job, _ = transition(sweep_id, take)
    held = (job.sweep or {}).get("lease") or {}
    return lease if held.get("id") == lease else None


def release_lease(transition: Transition, sweep_id: str, lease: str, pokes: int) -> bool:
    """Let go of the lease; True if a poke came since ``pokes`` (step again)."""

    def release(job: JobRecord) -> dict[str, Any] | None:
        held = (job.sweep or {}).get("lease") or {}
        if held.get("id") != lease:
            return None
        return {"sweep": {**job.sweep, "lease": None}}  # type: ignore[dict-item]

    job, _ = transition(sweep_id, release)
    return job.sweep is not None and job.sweep["pokes"] > pokes


def renew_lease(transition: Transition, sweep_id: str, lease: str) -> bool:
    """Hold the lease LEASE_S more (a fan-out onto slow compute outlasts one); False if lost."""
    until = (utcnow() + timedelta(seconds=LEASE_S)).isoformat()

    def renew(job: JobRecord) -> dict[str, Any] | None:
        sweep = job.sweep or {}
        if (sweep.get("lease") or {}).get("id") != lease:
            return None
        return {"sweep": {**sweep, "lease": {"id": lease, "until": until}}}

    return transition(sweep_id, renew)[1]

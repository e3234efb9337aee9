"""One job's bill, read from its record: when its compute was held, and for what.

A rental is cut into three parts on the clock: **setup** (compute requested to the user's code
started: provisioning, boot, the environment build), **run** (the code's own time) and **idle**
(the code ended to the compute confirmed released, and the billed tail after it: an Azure ML
cluster's nodes idling before they scale down). Rentals given up before this one (a spot
eviction, compute the platform could not place) are kept on the record without their times, so
they count as **earlier**, at the moment the job was made. Each part is priced at the rate the
record took when its compute went live; a record without a price (local compute at the default
rate 0, or a SKU the price table does not know) counts its time as unpriced hours.

Everything here is a pure function of the record and a clock: reading a bill twice (or after a
redelivered event, which changes nothing on the record) gives the same figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ephemerid.record import JobRecord

PARTS = ("setup", "run", "idle")
_RULE_IN_SOURCE = re.compile(r"\(rule (?P<rule>[^)]+)\)$|^schedule (?P<schedule>\S+)$")


@dataclass(frozen=True)
class Segment:
    part: str  # setup, run or idle
    start: datetime
    end: datetime

    def seconds_in(self, since: datetime, until: datetime) -> float:
        return max(0.0, (min(self.end, until) - max(self.start, since)).total_seconds())


@dataclass(frozen=True)
class Earlier:
    """A rental given up before the job's current one: its seconds and cost, without times."""

    at: datetime
    held_s: float
    cost_usd: float | None


@dataclass(frozen=True)
class JobBill:
    job_id: str
    backend: str
    sku: str
    spot: bool
    owner: str
    rule: str
    sweep: str
    gpus: int  # GPUs held at once (per node x nodes; 0 on the CPU)
    price_per_hour: float | None
    segments: tuple[Segment, ...]
    earlier: tuple[Earlier, ...]

    @property
    def priced(self) -> bool:
        return bool(self.price_per_hour)

    def seconds(self, since: datetime, until: datetime) -> dict[str, float]:
        """Seconds of each part (and ``earlier``) that fall in [since, until)."""
        found = dict.fromkeys((*PARTS, "earlier"), 0.0)
        for segment in self.segments:
            found[segment.part] += segment.seconds_in(since, until)
        found["earlier"] = sum(e.held_s for e in self.earlier if since <= e.at < until)
        return found

    def cost(self, since: datetime, until: datetime) -> float:
        """USD billed in [since, until): priced parts, and earlier rentals made in it."""
        held = sum(s.seconds_in(since, until) for s in self.segments)
        cost = held / 3600 * (self.price_per_hour or 0.0)
        return cost + sum(e.cost_usd or 0.0 for e in self.earlier if since <= e.at < until)

    def total(self) -> float:
        """USD billed over the whole life of the job (so far, for compute still held)."""
        return self.cost(datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))

    def touches(self, since: datetime, until: datetime) -> bool:
        """Whether any of its compute was held in [since, until)."""
        return any(s.start < until and s.end > since for s in self.segments) or any(
            since <= e.at < until for e in self.earlier
        )


def bill(job: JobRecord, now: datetime, sweep: str = "") -> JobBill:
    """``job``'s bill as of ``now`` (a rental still held runs to ``now``); ``sweep``: the sweep
    it is a trial of, if any (its ``parent`` may also be a fanned-out batch job)."""
    return JobBill(
        job_id=job.id,
        backend=job.backend,
        sku=job.sku,
        spot=job.spot,
        owner=job.owner,
        rule=rule_of(job),
        sweep=sweep,
        gpus=0 if job.sku.startswith("cpu") else job.spec.compute.gpus * job.spec.compute.nodes,
        price_per_hour=job.price_per_hour,
        segments=_segments(job, now),
        earlier=tuple(
            Earlier(job.created_at, float(c.get("held_s") or 0), _number(c.get("cost_usd")))
            for c in job.earlier_compute
        ),
    )


def _segments(job: JobRecord, now: datetime) -> tuple[Segment, ...]:
    begin = job.compute_requested_at
    if begin is None:
        return ()
    held_end = max(job.released_at or now, begin)  # the rental itself
    end = held_end + timedelta(seconds=job.billed_tail_s) if job.released_at else held_end
    if job.started_at is not None:
        run_start = _clamp(job.started_at, begin, held_end)
        run_end = _clamp(job.finished_at or held_end, run_start, held_end)
        parts = [("setup", begin, run_start), ("run", run_start, run_end), ("idle", run_end, end)]
    else:  # its code never started: all setup until the job ended, idle after
        stop = _clamp(job.finished_at or held_end, begin, held_end)
        parts = [("setup", begin, stop), ("idle", stop, end)]
    return tuple(Segment(part, start, stop) for part, start, stop in parts if stop > start)


def _clamp(value: datetime, low: datetime, high: datetime) -> datetime:
    return min(max(value, low), high)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def rule_of(job: JobRecord) -> str:
    """The rule that made ``job`` ("" for one submitted by hand)."""
    return rule_from(job.owner, job.source)


def rule_from(owner: str, source: str) -> str:
    """The rule named by a job's owner (``rule:<name>``) or its source (``blob ... (rule
    <name>)``, ``schedule <name>``); "" for none."""
    if owner.startswith("rule:"):
        return owner.removeprefix("rule:")
    found = _RULE_IN_SOURCE.search(source)
    return (found.group("rule") or found.group("schedule")) if found else ""

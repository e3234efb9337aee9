"""What each dashboard page shows, read through the service and scoped to one caller.

Pure reads: nothing here changes a job. Every job a view returns is one the caller ``sees``
(its own, or any for an admin); another owner's job answers NotFound, as an unknown one does,
so ids do not leak (the HTTP API's rule, ``ephemerid.functions.handlers``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ephemerid.errors import BadInput, NotFound
from ephemerid.functions.callers import Caller
from ephemerid.outputs import Output, list_outputs
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow
from ephemerid.rejections import Rejection
from ephemerid.service import Service
from ephemerid.sweeps.state import view

LOG_TAIL = 64 * 1024  # what a job page shows of its log at first; the rest streams after it
HELD = (ComputeState.REQUESTED, ComputeState.LIVE)
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,199}$"


Q = TypeVar("Q", bound="PageQuery")


class PageQuery(BaseModel):
    """A page's query string as a model: every field optional; an unknown or malformed one is
    BadInput naming it and saying what the page takes (``WHAT``, ``USE``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    WHAT: ClassVar[str] = "query"
    USE: ClassVar[str] = ""

    @classmethod
    def parse(cls: type[Q], query: dict[str, str]) -> Q:
        given = {k: v for k, v in query.items() if v != "" and k not in ("token", "code")}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or cls.WHAT}: {_plain(e['msg'])}"
                for e in exc.errors()
            )
            raise BadInput(f"bad {cls.WHAT} ({problems}): {cls.USE}") from exc

    def query(self) -> dict[str, str]:
        """The query string that makes this model again (what links carry on)."""
        data = self.model_dump(exclude_none=True, exclude_defaults=True, mode="json")
        return {k: ("1" if v is True else str(v)) for k, v in data.items()}


class JobFilter(PageQuery):
    """The jobs page's query."""

    WHAT: ClassVar[str] = "filter"
    USE: ClassVar[str] = "use state=RUNNING, rule=NAME, sweep=JOB, owner=NAME, limit=1..5000"

    state: JobState | None = None
    rule: str | None = Field(default=None, pattern=_NAME)
    sweep: str | None = Field(default=None, pattern=_NAME)
    owner: str | None = Field(default=None, pattern=_NAME)
    limit: int = Field(default=200, ge=1, le=5000)

    @field_validator("state", mode="before")
    @classmethod
    def _state(cls, value: Any) -> Any:
        return JobState.parse(value) if isinstance(value, str) and value else value or None

    def takes(self, job: JobRecord) -> bool:
        return (
            (self.state is None or job.state is self.state)
            and (self.rule is None or job.owner == f"rule:{self.rule}")
            and (self.sweep is None or self.sweep in (job.parent, job.id))
            and (self.owner is None or job.owner == self.owner)
        )


def _plain(message: str) -> str:
    return re.sub(r"^Value error, ", "", message)


@dataclass(frozen=True)
class JobRow:
    """One line of the jobs page: where the job is and what it has cost."""

    job: JobRecord
    runtime_s: float | None
    elapsed_s: float

    @property
    def idle_s(self) -> float | None:
        """Compute held but running neither the code nor its setup: idle that was paid for."""
        held = self.held_s
        if held is None:
            return None
        return max(held - (self.runtime_s or 0.0) - (self.job.setup_s or 0.0), 0.0)

    @property
    def held_s(self) -> float | None:
        job = self.job
        if job.held_s is not None:
            return job.held_s
        if job.compute_state in HELD and job.compute_requested_at is not None:
            return (utcnow() - job.compute_requested_at).total_seconds()
        return None


def visible(service: Service, caller: Caller, job_id: str) -> JobRecord:
    """The job, if the caller may see it; NotFound, as for no job, if not."""
    job = service.get(job_id)
    if not caller.sees(job.owner):
        raise NotFound(f"no job '{job_id}': the jobs page lists the jobs there are")
    return job


def row(service: Service, job: JobRecord) -> JobRow:
    runtime = job.runtime_s
    if runtime is None and not job.state.terminal and job.compute_state is ComputeState.LIVE:
        runtime = service.progress(job).elapsed_s(job)  # only a running job reads its run files
    end = job.finished_at or (job.updated_at if job.state.terminal else utcnow())
    return JobRow(job, runtime, max((end - job.created_at).total_seconds(), 0.0))


def job_rows(service: Service, caller: Caller, wanted: JobFilter) -> list[JobRow]:
    jobs = [j for j in service.list() if caller.sees(j.owner) and wanted.takes(j)]
    jobs.sort(key=lambda j: j.created_at, reverse=True)
    return [row(service, job) for job in jobs[: wanted.limit]]


@dataclass(frozen=True)
class JobPage:
    row: JobRow
    metrics: dict[str, list[tuple[int | None, float]]]
    log: str
    log_offset: int
    outputs: list[Output]
    life: list[tuple[str, datetime]]
    trials: list[dict[str, Any]] = field(default_factory=list)


def job_page(service: Service, caller: Caller, job_id: str) -> JobPage:
    job = visible(service, caller, job_id)
    raw = service.read_log(job.id)
    start = max(len(raw) - LOG_TAIL, 0)
    return JobPage(
        row=row(service, job),
        metrics=service.metric_history(job.id),
        log=raw[start:].decode("utf-8", "replace"),
        log_offset=len(raw),
        outputs=list_outputs(service.artifacts, job.id),
        life=life(job),
    )


def life(job: JobRecord) -> list[tuple[str, datetime]]:
    """The job's and its compute's moments, in order."""
    moments = [
        ("accepted", job.created_at),
        ("waiting for capacity since", job.waiting_since),
        ("compute requested", job.compute_requested_at),
        ("compute live", job.live_at),
        ("code started", job.started_at),
        ("code finished", job.finished_at),
        ("compute released", job.released_at),
    ]
    return sorted(((what, at) for what, at in moments if at is not None), key=lambda m: m[1])


def live(service: Service, caller: Caller, job_id: str, offset: int) -> dict[str, Any]:
    """What a job page's poll needs: the log after ``offset``, the state, the curves so far."""
    job = visible(service, caller, job_id)
    text = service.read_log(job.id, offset)
    current = row(service, job)
    return {
        "state": job.state.value,
        "compute_state": job.compute_state.value,
        "reason": job.reason,
        "settled": job.settled,
        "log": text.decode("utf-8", "replace"),
        "next_offset": offset + len(text),
        "metrics": {n: [[s, v] for s, v in h] for n, h in service.metric_history(job.id).items()},
        "runtime_s": current.runtime_s,
        "held_s": current.held_s,
        "idle_s": current.idle_s,
        "cost_usd": job.cost_usd,
    }


def output_of(service: Service, caller: Caller, job_id: str, name: str) -> Output:
    job = visible(service, caller, job_id)
    for output in list_outputs(service.artifacts, job.id):
        if output.name == name:
            return output
    raise NotFound(f"job {job_id} has no output '{name}': its page lists the outputs it has")


# -- sweeps ------------------------------------------------------------------------------------


def sweeps(service: Service, caller: Caller) -> list[dict[str, Any]]:
    found = [j for j in service.list() if j.sweep is not None and caller.sees(j.owner)]
    found.sort(key=lambda j: j.created_at, reverse=True)
    return [view(j) for j in found]


def sweep_page(
    service: Service, caller: Caller, sweep_id: str, sort: str = "", desc: bool = False
) -> dict[str, Any]:
    record = visible(service, caller, sweep_id)
    if record.sweep is None:
        raise NotFound(f"'{sweep_id}' is a {record.kind} job, not a sweep: see its job page")
    shown = view(record)
    rows = shown["trials"]
    params = sorted({p for t in rows for p in t.get("params", {})})
    if sort and sort not in ("number", "value", "state", *params):
        raise BadInput(f"sort '{sort}' is unknown: sort by number, value, state or a param")
    if sort:
        have = [t for t in rows if _key(t, sort) is not None]
        have.sort(key=lambda t: _key(t, sort), reverse=desc)
        rows = have + [t for t in rows if _key(t, sort) is None]
    shown["trials"] = rows
    shown["params"] = params
    shown["best_curve"] = best_so_far(view(record)["trials"], shown["goal"])
    shown["scatter"] = {p: scatter(rows, p) for p in params}
    return shown


def _key(trial: dict[str, Any], sort: str) -> Any:
    value = trial.get(sort) if sort in ("number", "value", "state") else trial["params"].get(sort)
    if isinstance(value, bool) or value is None:
        return None if value is None else int(value)
    return value if isinstance(value, int | float) else str(value)


def best_so_far(trials: list[dict[str, Any]], goal: str) -> list[list[float]]:
    """[[trial number, best value by then], ...] over the trials that have a value."""
    best: float | None = None
    points = []
    for trial in sorted(trials, key=lambda t: t["number"]):
        value = trial.get("value")
        if value is None:
            continue
        if best is None or (value > best if goal == "maximize" else value < best):
            best = value
        points.append([trial["number"], best])
    return points


def scatter(trials: list[dict[str, Any]], param: str) -> list[list[float]]:
    """[[param value, metric value], ...] for trials with a numeric param and a value."""
    points = [
        [float(t["params"][param]), float(t["value"])]
        for t in trials
        if t.get("value") is not None
        and isinstance(t["params"].get(param), int | float)
        and not isinstance(t["params"].get(param), bool)
    ]
    return sorted(points)


# -- models, compute, refusals -----------------------------------------------------------------


def models(service: Service, caller: Caller) -> list[dict[str, Any]]:
    """Each model with its versions, their aliases and the job that made each (linked only when
    the caller may see that job)."""
    registry = service.models
    found = []
    for name in registry.names():
        aliases = registry.aliases(name)
        versions = []
        for version in reversed(registry.versions(name)):
            versions.append(
                {
                    "version": version,
                    "aliases": sorted(a for a, v in aliases.items() if v == version.version),
                    "job_visible": sees_job(service, caller, version.job_id),
                }
            )
        found.append({"name": name, "aliases": aliases, "versions": versions})
    return found


def sees_job(service: Service, caller: Caller, job_id: str) -> bool:
    try:
        return caller.sees(service.get(job_id).owner)
    except NotFound:
        return False


def compute_now(service: Service, caller: Caller) -> dict[str, Any]:
    """Everything held now, by backend, and what it costs per hour this minute."""
    held = [j for j in service.list_open() if j.compute_state in HELD and caller.sees(j.owner)]
    by_backend: dict[str, list[JobRow]] = defaultdict(list)
    for job in sorted(held, key=lambda j: j.created_at):
        by_backend[job.backend or "?"].append(row(service, job))
    backends = [
        {
            "name": name,
            "rows": rows,
            "per_hour": sum(r.job.price_per_hour or 0.0 for r in rows),
            "unpriced": sum(1 for r in rows if r.job.price_per_hour is None),
        }
        for name, rows in sorted(by_backend.items())
    ]
    return {
        "backends": backends,
        "count": len(held),
        "per_hour": sum(b["per_hour"] for b in backends),
        # what the backends themselves hold (stray compute too): only an admin sees it all
        "owned": service.held_compute() if caller.admin else None,
    }


def rejected(service: Service, caller: Caller) -> list[Rejection]:
    return service.rejections(owner=None if caller.admin else caller.name)

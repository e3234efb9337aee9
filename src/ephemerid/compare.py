"""Runs side by side: one row per job with its params, each metric's final value, runtime, cost.

``eph runs compare`` and ``Client.compare`` both build their rows here. A row is plain JSON
(``id``, ``state``, ``params``, ``metrics``, ``runtime_s``, ``cost_usd``); a job still running
shows its metrics and runtime so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ephemerid.errors import BadInput
from ephemerid.reads import Reads
from ephemerid.record import JobRecord


def compare(
    service: Reads, jobs: Sequence[JobRecord], by: str | None = None, desc: bool = False
) -> list[dict[str, Any]]:
    """A row per job, in the order given (a sweep's trials in its place), or sorted by metric
    ``by`` (ascending unless ``desc``; runs without it last). BadInput for no jobs, or a ``by``
    that none of the runs has."""
    if not jobs:
        raise BadInput("compare needs at least one job: name the jobs to compare")
    runs = [t for job in jobs for t in (service.sweep_trials(job.id) if job.sweep else [job])]
    unique = {job.id: job for job in reversed(runs)}  # each run once, where it first comes
    rows = [row(service, unique[job_id]) for job_id in dict.fromkeys(j.id for j in runs)]
    if by is None:
        return rows
    known = metric_names(rows)
    if by not in known:
        have = ", ".join(known) if known else "none (no run logged a metric)"
        raise BadInput(f"--by '{by}': no run has that metric; the runs have {have}")
    with_it = [r for r in rows if by in r["metrics"]]
    with_it.sort(key=lambda r: float(r["metrics"][by]), reverse=desc)
    return with_it + [r for r in rows if by not in r["metrics"]]


def row(service: Reads, job: JobRecord) -> dict[str, Any]:
    progress = service.progress(job)
    ended = job.state.terminal and job.metrics  # an ended job's record keeps its summary
    metrics = job.metrics if ended else {n: m.value for n, m in progress.metrics.items()}
    return {
        "id": job.id,
        "sweep": job.parent,
        "state": job.state.value,
        "params": dict(job.spec.params),
        "metrics": dict(sorted(metrics.items())),
        "runtime_s": job.runtime_s if job.runtime_s is not None else progress.elapsed_s(job),
        "cost_usd": job.cost_usd,
    }


def metric_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every metric any row has, sorted."""
    return sorted({name for r in rows for name in r["metrics"]})

"""A sweep's record, read without Optuna: its spec, its trials so far, the best one.

A sweep is a job record (``JobRecord.sweep`` is not None) whose ``spec`` is its trials'
template and whose ``sweep`` holds the rest: ``search`` and ``register_best`` (the spec without
its trial), ``journal`` (Optuna's study, ``ephemerid.sweeps.search``), ``lease`` (the process
advancing it now), ``pokes`` (events that came while it was held), and the summary the
controller writes after each step: ``trials`` and ``best``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

from ephemerid.record import JobRecord, JobState
from ephemerid.rules import job_name
from ephemerid.sweeps.spec import SweepSpec

# trial states, as the summary and `eph sweep show` name them
ACTIVE = "active"


def initial(spec: SweepSpec) -> dict[str, Any]:
    return {
        "spec": spec.model_dump(mode="json", exclude={"trial"}, exclude_none=True),
        "journal": [],
        "lease": None,
        "pokes": 0,
        "trials": [],
        "best": None,
    }


def sweep_spec(record: JobRecord) -> SweepSpec:
    """The spec the sweep was submitted with (its trial template is the record's spec)."""
    state = record.sweep or {}
    trial = record.spec.model_dump(mode="json", exclude_none=True)
    return SweepSpec.model_validate({**state["spec"], "trial": trial})


def trial_key(sweep: JobRecord, number: int) -> str:
    """The idempotency key of the sweep's trial ``number``: a re-run fan-out names the same job."""
    return f"{sweep.key}#trial-{number}"


def trial_name(sweep: JobRecord, number: int) -> str:
    label = job_name((sweep.sweep or {}).get("spec", {}).get("name") or sweep.spec.label)
    suffix = f"-{number}"
    if len(label) + len(suffix) > 64:
        label = label[: 56 - len(suffix)] + hashlib.sha256(label.encode()).hexdigest()[:8]
    return label + suffix


def trials(record: JobRecord) -> list[dict[str, Any]]:
    return list((record.sweep or {}).get("trials", []))


def trial_ids(record: JobRecord) -> list[str]:
    return [t["job"] for t in trials(record) if t.get("job")]


def view(record: JobRecord) -> dict[str, Any]:
    """What `eph sweep show` and `Client.sweep` say: the search's progress, trials, best."""
    spec = sweep_spec(record)
    rows = trials(record)
    counts = Counter(t["state"] for t in rows)
    planned = spec.search.trials
    return {
        "id": record.id,
        "name": spec.label,
        "state": record.state.value,
        "reason": record.reason,
        "method": spec.search.method.value,
        "metric": spec.search.metric,
        "goal": spec.search.goal.value,
        "max_parallel": spec.search.max_parallel,
        "trials_planned": planned,
        "trials_made": len(rows),
        "counts": {
            "running": counts.get(ACTIVE, 0),
            "succeeded": counts.get(JobState.SUCCEEDED.value, 0),
            "pruned": counts.get(JobState.PRUNED.value, 0),
            "failed": sum(
                counts.get(s.value, 0)
                for s in (JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED)
            ),
        },
        "best": (record.sweep or {}).get("best"),
        # what its trials' compute cost, as of the sweep's last step
        "cost_usd": round(sum(t.get("cost_usd") or 0.0 for t in rows), 6),
        "model_version": record.model_version,
        "trials": rows,
    }

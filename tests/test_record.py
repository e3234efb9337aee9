"""JobRecord: copies, and the JSON the stores keep."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for
from ephemerid.spec import validate_spec

SPEC = validate_spec({"kind": "train", "name": "churn", "code": "/srv/code", "entrypoint": "t.py"})


def record(**fields: object) -> JobRecord:
    return JobRecord(id=job_id_for("train", "k"), key="k", spec=SPEC, source="test", **fields)


def test_evolve_changes_what_it_is_given_and_the_update_time_only() -> None:
    job = record(handle={"vm": "v1"}, metrics={"auc": 0.9})

    moved = job.evolve(state=JobState.RUNNING, compute_state=ComputeState.LIVE)

    assert moved == replace(
        job, state=JobState.RUNNING, compute_state=ComputeState.LIVE, updated_at=moved.updated_at
    )
    assert moved.updated_at >= job.updated_at
    assert job.state is JobState.ACCEPTED  # the original is untouched
    with pytest.raises(AttributeError):
        moved.state = JobState.FAILED  # type: ignore[misc]  # still frozen


def test_evolve_refuses_a_field_a_record_does_not_have() -> None:
    with pytest.raises(TypeError, match=r"no field stat$"):
        record().evolve(stat=JobState.RUNNING)


def test_dumps_is_to_json_as_compact_json_and_reads_back() -> None:
    job = record(handle={"vm": "v1"}, outputs=["runs/x/outputs/a"], price_per_hour=1.5)

    assert job.dumps() == json.dumps(job.to_json(), separators=(",", ":"))
    assert JobRecord.from_json(json.loads(job.dumps())) == job


def test_to_json_is_the_callers_own_copy() -> None:
    job = record(handle={"vm": "v1"}, outputs=["a"])

    data = job.to_json()
    data["handle"]["vm"] = "changed"
    data["outputs"].append("b")

    assert job.handle == {"vm": "v1"} and job.outputs == ["a"]

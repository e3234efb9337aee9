"""A batch job over shards: its files split across child jobs on their own compute, one merged
manifest, no second child for a redelivered trigger, and a cancel that ends every shard."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pytest

from batching import (
    MODEL,
    manifest_of,
    predict_spec,
    predictions,
    put_input,
    register_model,
    table,
)
from drive import HOLD_SCRIPT, Gate, service_with, write_script
from ephemerid.batch.fanout import split
from ephemerid.errors import SpecError
from ephemerid.intake import Intake
from ephemerid.record import JobState
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from sweeping import drive_parent

FILES = 5


@pytest.fixture
def scored(settings: Settings) -> Iterator[Service]:
    """A service with room for 4 jobs at once, a model, and 5 Parquet files of 40 rows."""
    with service_with(settings, local_slots=4) as service:
        register_model(service)
        for n in range(FILES):  # ids 0..199
            put_input(service, f"incoming/score/f{n}.parquet", table(40, start=40 * n), "parquet")
        yield service


def test_shards_split_the_files_and_the_parent_merges_their_manifests(
    scored: Service, code_dir: Path
) -> None:
    spec = predict_spec(code_dir, {"data": "incoming/score"}, batch={"shards": 3, "keep": ["id"]})
    parent = drive_parent(scored, scored.submit(spec, key="nightly").job.id)
    shards = [j for j in scored.shard_jobs(parent.id) if j is not None]

    assert parent.state is JobState.SUCCEEDED and parent.compute_state.value == "none"
    assert len(shards) == 3 and {s.parent for s in shards} == {parent.id}
    assert all(s.state is JobState.SUCCEEDED for s in shards)
    files = sorted(k for s in shards for k in s.spec.inputs.values())
    assert files == [f"incoming/score/f{n}.parquet" for n in range(FILES)]  # each file once
    merged = manifest_of(scored, parent)
    assert merged.rows == 200 and merged.complete
    rows = predictions(scored, parent)
    assert sorted(rows["id"].to_pylist()) == list(range(200))  # every row once
    assert pc.all(pc.equal(rows["prediction"], pc.add(pc.multiply(rows["id"], 2.0), 0.5))).as_py()
    assert "3 shards, 200 rows" in parent.reason
    assert scored.held_compute() == 0


def test_a_redelivered_trigger_makes_no_second_shard_job(
    scored: Service, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, MODEL, "score.py")
    rules = Rules.parse(
        f"""
rules:
  - name: score-drop
    blob: incoming/drops/{{name}}.txt
    job:
      kind: predict
      code: {code_dir}
      entrypoint: score.py
      model: doubler:1
      inputs: {{data: incoming/score}}
      batch: {{shards: 2}}
""",
        base=tmp_path,
    )
    intake = Intake(scored, rules)
    put_input(scored, "incoming/drops/go.txt", b"go")

    [first] = intake.blob("incoming/drops/go.txt", None).submitted
    [again] = intake.blob("incoming/drops/go.txt", None).submitted
    parent = drive_parent(scored, first.job.id)

    assert (again.created, again.job.id) == (False, first.job.id)
    assert len([j for j in scored.list() if j.parent == parent.id]) == 2
    assert parent.state is JobState.SUCCEEDED


def test_cancelling_the_parent_cancels_every_shard(
    scored: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, HOLD_SCRIPT, "hold.py")
    data = predict_spec(code_dir, {"data": "incoming/score"}).model_dump(exclude_none=True)
    data.update(entrypoint="hold.py", params=gate.params, batch={"shards": 2})
    parent = scored.submit(JobSpec.model_validate(data), key="held").job
    gate.pid()  # a shard runs (the other may still wait for it)
    cancelled = scored.cancel(parent.id)
    done = drive_parent(scored, parent.id)
    shards = [j for j in scored.shard_jobs(parent.id) if j is not None]

    assert cancelled.state is JobState.CANCELLED and done.state is JobState.CANCELLED
    assert len(shards) == 2 and {s.state for s in shards} == {JobState.CANCELLED}
    assert scored.held_compute() == 0


def test_more_shards_than_files_makes_one_per_file_and_no_file_is_refused(
    scored: Service, code_dir: Path
) -> None:
    spec = predict_spec(code_dir, {"data": "incoming/score/f0.parquet"}, batch={"shards": 4})
    parent = drive_parent(scored, scored.submit(spec).job.id)

    assert parent.state is JobState.SUCCEEDED
    assert len([j for j in scored.shard_jobs(parent.id) if j is not None]) == 1
    with pytest.raises(SpecError, match="does not exist"):
        scored.submit(predict_spec(code_dir, {"data": "incoming/none"}, batch={"shards": 2}))


def test_the_split_balances_bytes_and_is_the_same_every_time() -> None:
    files = [("a", 100), ("b", 60), ("c", 50), ("d", 40), ("e", 10)]

    groups = split(files, 2)

    assert groups == split(list(reversed(files)), 2)
    assert sorted(k for g in groups for k in g) == ["a", "b", "c", "d", "e"]
    sizes = dict(files)
    loads = sorted(sum(sizes[k] for k in g) for g in groups)
    assert loads == [120, 140]  # the largest first, each to the lightest group so far
    assert split(files, 9) == [[k] for k, _ in sorted(files, key=lambda f: -f[1])]


CRASH = """
import json, os, sys
from ephemerid.app import build_service
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec

service = build_service(Settings.from_env({}, home=sys.argv[1], local_slots=4, heartbeat_s=0.5))
submit, made = Service.submit, []

def crashing(self, spec, **kwargs):
    done = submit(self, spec, **kwargs)
    if kwargs.get("parent"):
        made.append(done)
        os._exit(3)  # the first shard's job is made; the others are not
    return done

Service.submit = crashing
service.submit(JobSpec.model_validate(json.loads(sys.argv[2])), key="crash")
"""


def test_a_crash_in_the_middle_of_the_fan_out_makes_each_shard_once(
    settings: Settings, scored: Service, code_dir: Path, tmp_path: Path
) -> None:
    spec = predict_spec(code_dir, {"data": "incoming/score"}, batch={"shards": 3})
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    crashed = subprocess.run(
        [sys.executable, str(script), str(settings.home), spec.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 3, crashed.stderr
    [parent] = [j for j in scored.list() if j.fanout is not None]
    assert len([j for j in scored.list() if j.parent == parent.id]) == 1

    done = drive_parent(scored, parent.id)  # reaper passes carry it on
    shards = [j for j in scored.list() if j.parent == parent.id]

    assert done.state is JobState.SUCCEEDED
    assert len(shards) == 3 and {s.state for s in shards} == {JobState.SUCCEEDED}
    assert manifest_of(scored, done).rows == 200
    assert scored.held_compute() == 0

"""A job record stays small whatever the job wrote, so it saves on every store (Table Storage
holds at most 1 MiB an entity): the record keeps the count and bytes of the outputs and the first
of them, the full list is in ``runs/<job>/outputs.json``, and metrics are kept up to a bound.
"""

from __future__ import annotations

import json
from pathlib import Path

from drive import finish, spec_for, write_script
from ephemerid import names
from ephemerid.artifacts import get_bytes, put_bytes
from ephemerid.contract import OUTPUTS_LISTED, Outputs
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for, utcnow
from ephemerid.service import Service
from ephemerid.transitions import METRICS_KEPT

MANY_OUTPUTS = """
import os, pathlib

out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
for shard in range(20):
    folder = out / f"data-{shard:02}"  # before model/ in name order
    folder.mkdir()
    for n in range(1000):
        (folder / f"{n:04}.txt").write_text("x")
(out / "model").mkdir()
(out / "model" / "weights.txt").write_text("trained")
"""


def test_a_job_writing_20000_outputs_succeeds_on_table_storage_with_all_in_its_manifest(
    table_service: Service, code_dir: Path
) -> None:
    script = write_script(code_dir, MANY_OUTPUTS)
    spec = spec_for(code_dir, script, register_as={"name": "wide"})

    job = finish(table_service, table_service.submit(spec).job.id, timeout=240)

    assert job.state is JobState.SUCCEEDED, job.reason
    assert job.compute_state is ComputeState.RELEASED
    assert table_service.get(job.id) == job  # the record saved, and reads back whole
    assert (job.output_count, job.output_bytes) == (20_001, 20_000 + len("trained"))
    assert len(job.outputs) == OUTPUTS_LISTED
    key = names.run_key(job.id, names.OUTPUTS_FILE)
    manifest = Outputs.loads(get_bytes(table_service.artifacts, key), where=key)
    assert len(manifest.outputs) == len(set(manifest.outputs)) == 20_001
    assert set(job.outputs) <= set(manifest.outputs)
    assert job.model_version == "wide:1"  # its model/ output was seen, though listed last


def test_a_result_listing_20000_outputs_and_1000_metrics_is_recorded_as_a_summary(
    table_service: Service,
) -> None:
    spec = spec_for(Path("/c"), "t.py")  # an older runner of the same contract: no manifest
    record = JobRecord(id=job_id_for("train", "wide"), key="wide", spec=spec, source="test")
    running = record.evolve(backend="local", state=JobState.RUNNING, live_at=utcnow())
    job, _ = table_service.store.create_if_absent(running)
    outputs = [names.run_key(job.id, f"outputs/file-{n:05}.txt") for n in range(20_000)]
    metrics = {f"loss/{n:04}": float(n) for n in range(1000)}
    result = {"contract": 1, "job_id": job.id, "status": "succeeded", "outputs": outputs}
    result["metrics"] = metrics
    put_bytes(
        table_service.artifacts,
        names.run_key(job.id, names.RESULT_FILE),
        json.dumps(result).encode(),
    )

    done = table_service.complete(job.id)

    assert done.state is JobState.SUCCEEDED, done.reason
    assert table_service.get(job.id) == done
    assert done.output_count == 20_000
    assert done.outputs == outputs[:OUTPUTS_LISTED]
    assert done.metrics == dict(sorted(metrics.items())[:METRICS_KEPT])

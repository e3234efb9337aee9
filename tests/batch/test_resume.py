"""A batch job's rerun (its runner started again on the same compute, after a reboot or a
crash) or new attempt (on a new spot VM after an eviction) resumes after the shards its manifest
lists: each shard is written once, each row once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from batching import manifest_of, predict_spec, predictions, put_input, register_model, table
from compute.cloud import ephemerid, settle
from compute.test_azure_vm import T4
from compute.vms import VmPlayer, azure_env
from drive import Gate, alive, log_of, wait_for
from ephemerid import names
from ephemerid.artifacts import get_bytes
from ephemerid.batch.manifest import MANIFEST_FILE, Manifest, predictions_key
from ephemerid.contract import Result, RunStatus
from ephemerid.record import JobState
from ephemerid.service import Service
from ephemerid.testing.arm import ArmSimulator
from test_restarts import start_runner

# scores like batching.MODEL; notes each batch's first id, and holds in the 6th batch of the
# first start until it is ended
HELD = """
import json, os, pathlib, time
import pyarrow.compute as pc

GATE = pathlib.Path(json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())["gate"])

def load(model_dir):
    return float((pathlib.Path(model_dir) / "offset.txt").read_text())

def predict(model, batch):
    first = batch["id"][0].as_py() if "id" in batch.column_names else batch["x"][0].as_py()
    with open(GATE / "batches.txt", "a") as seen:
        seen.write(f"{int(first)}\\n")
    if first == 10 and not (GATE / "held").exists():  # the first start holds here for good
        (GATE / "held").touch()
        while True:
            time.sleep(0.05)
    return {"prediction": pc.add(pc.multiply(batch["x"], 2), model)}
"""


def test_a_killed_batch_job_rerun_skips_the_complete_shards_and_writes_each_once(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    register_model(service)
    put_input(service, "incoming/a.parquet", table(20), "parquet")
    batch = {"keep": ["id"], "rows_per_batch": 2, "max_rows_per_shard": 4}
    spec = predict_spec(
        code_dir, {"rows": "incoming/a.parquet"}, HELD, batch=batch, params=gate.params
    )
    job = service.submit(spec).job
    key = predictions_key(job.id, MANIFEST_FILE)

    def two_shards() -> bool:
        stat = service.artifacts.stat(key)
        return (
            bool(stat) and len(Manifest.loads(get_bytes(service.artifacts, key), key).shards) == 2
        )

    wait_for(two_shards, "two shards complete in the manifest", timeout=60)
    bucket = Path(service.settings.artifacts_url.removeprefix("file://"))
    first = {s.key: (bucket / s.key).stat().st_mtime_ns for s in manifest_of(service, job).shards}
    os.kill(job.handle["pid"], signal.SIGKILL)  # the runner, mid-job; its worker is left holding
    wait_for(lambda: not alive(job.handle["pid"]), "the first runner to die")

    second = start_runner(service, job.id, job.handle["workdir"])
    second.wait(timeout=90)

    result = Result.loads(get_bytes(service.artifacts, names.run_key(job.id, names.RESULT_FILE)))
    assert result.status is RunStatus.SUCCEEDED, result.reason
    manifest = manifest_of(service, job)
    assert manifest.complete
    assert [s.rows for s in manifest.shards] == [4, 4, 4, 4, 4]
    assert [s.start for s in manifest.shards] == [0, 4, 8, 12, 16]
    assert len({s.key for s in manifest.shards}) == 5
    for shard_key, written in first.items():  # the complete shards were not written again
        assert (bucket / shard_key).stat().st_mtime_ns == written
    out = predictions(service, job)
    assert out.column("id").to_pylist() == list(range(20))
    assert out.column("prediction").to_pylist() == [2.0 * i + 0.5 for i in range(20)]
    seen = [int(line) for line in (gate.path / "batches.txt").read_text().split()]
    assert seen == [0, 2, 4, 6, 8, 10, 8, 10, 12, 14, 16, 18]  # the rerun: from row 8 on
    assert "resuming: 2 shard(s), 8 row(s) done" in log_of(service, job.id)


# -- a new attempt on new compute: a spot VM evicted with no notice, mid-job -------------------


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(provision_s=0.05, delete_s=0.05, retry_after="0.02") as simulator:
        yield simulator


@pytest.fixture
def azure(tmp_path: Path, sim: ArmSimulator) -> Iterator[Service]:
    env = azure_env(tmp_path / "home", sim, EPHEMERID_HEARTBEAT_TIMEOUT_S="15")
    with ephemerid(env) as service:
        yield service


def test_a_batch_job_evicted_mid_way_runs_again_on_a_new_vm_writing_only_the_shards_left(
    azure: Service, sim: ArmSimulator, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    register_model(azure)
    put_input(azure, "incoming/a.parquet", table(20), "parquet")
    batch = {"keep": ["id"], "rows_per_batch": 2, "max_rows_per_shard": 4}
    compute = {"spot": "only", "skus": [T4]}
    spec = predict_spec(
        code_dir,
        {"rows": "incoming/a.parquet"},
        HELD,
        batch=batch,
        params=gate.params,
        compute=compute,
    )
    with VmPlayer(sim, tmp_path / "vms") as player:
        job = azure.submit(spec).job
        key = predictions_key(job.id, MANIFEST_FILE)
        wait_for(lambda: shards_listed(azure, key) == 2, "two shards complete", timeout=90)
        bucket = Path(azure.settings.artifacts_url.removeprefix("file://"))
        first = {s.key: (bucket / s.key).stat().st_mtime_ns for s in manifest_of(azure, job).shards}
        vm = azure.get(job.id).handle["vm"]

        sim.evict(vm)  # no notice: the runner and its worker die with the VM, no result written
        [done] = settle(azure, [job.id], timeout=120)
        booted = player.booted()

    assert done.state is JobState.SUCCEEDED, done.reason
    assert done.evictions == 1 and booted == [vm, f"eph-{job.id}-1"]
    manifest = manifest_of(azure, done)
    assert manifest.complete and [s.rows for s in manifest.shards] == [4, 4, 4, 4, 4]
    assert len({s.key for s in manifest.shards}) == 5
    for shard_key, written in first.items():  # the new VM did not write them again
        assert (bucket / shard_key).stat().st_mtime_ns == written
    assert predictions(azure, done).column("id").to_pylist() == list(range(20))
    seen = [int(line) for line in (gate.path / "batches.txt").read_text().split()]
    assert seen == [0, 2, 4, 6, 8, 10, 8, 10, 12, 14, 16, 18]  # the new VM: from row 8 on
    assert "resuming: 2 shard(s), 8 row(s) done" in log_of(azure, job.id)
    assert sim.inventory() == []


def shards_listed(service: Service, key: str) -> int:
    if service.artifacts.stat(key) is None:
        return 0
    return len(Manifest.loads(get_bytes(service.artifacts, key), key).shards)

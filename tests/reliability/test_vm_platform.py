"""What Azure's platform does to a job's VM, and jobs that survive it: a spot VM evicted with no
notice, a Scheduled Events service slow to answer its first call, and a reboot or redeploy.

The real azure-mgmt-compute client talks to the ARM simulator, which does each of these on
request (``evict``, ``slow_events``, ``reboot``); ``VmPlayer`` plays each VM's runner from its
rendered units, and after a reboot starts it again only as systemd would.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from compute.cloud import ephemerid, settle
from compute.test_azure_vm import T4, vm_spec
from compute.vms import VmPlayer, azure_env
from drive import Gate, log_of, spec_for, wait_for, write_script
from ephemerid import names
from ephemerid.artifacts import get_bytes
from ephemerid.contract import Result
from ephemerid.record import JobState
from ephemerid.service import Service
from ephemerid.testing.arm import ArmSimulator

# Checkpoints as it goes (whole, then renamed into place), then holds on its first run only.
STEPPING_SCRIPT = """
import json, os, pathlib, time

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
gate = pathlib.Path(params["gate"])
folder = pathlib.Path(os.environ["EPHEMERID_CHECKPOINT_DIR"])
ckpt = folder / "step"
step = int(ckpt.read_text()) if ckpt.exists() else 0
print(f"starting at step {step}", flush=True)
first = step == 0
while step < 3:
    step += 1
    (folder / "step.tmp").write_text(str(step))
    os.replace(folder / "step.tmp", ckpt)
if first:
    (gate / "reached").touch()
    time.sleep(90)  # until the VM is evicted or rebooted
while step < 6:
    step += 1
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "final.txt").write_text(f"step {step}")
print(f"finished at step {step}", flush=True)
"""
QUICK = {"EPHEMERID_CHECKPOINT_UPLOAD_S": "1", "EPHEMERID_HEARTBEAT_TIMEOUT_S": "15"}


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(provision_s=0.05, delete_s=0.05, retry_after="0.02") as simulator:
        yield simulator


@pytest.fixture
def player(sim: ArmSimulator, tmp_path: Path) -> Iterator[VmPlayer]:
    with VmPlayer(sim, tmp_path / "vms") as vms:
        yield vms


@pytest.fixture
def azure(tmp_path: Path, sim: ArmSimulator) -> Iterator[Service]:
    with ephemerid(azure_env(tmp_path / "home", sim, **QUICK)) as service:
        yield service


def stepping_job(service: Service, code_dir: Path, gate: Gate, spot: str) -> str:
    """Submit the stepping script; its id once its step 3 checkpoint is in the bucket."""
    write_script(code_dir, STEPPING_SCRIPT, "train.py")
    spec = spec_for(code_dir, "train.py", params=gate.params, compute={"spot": spot, "skus": [T4]})
    job = service.submit(spec).job
    wait_for((gate.path / "reached").exists, "the first run to reach step 3")
    key = names.run_key(job.id, "checkpoint/step")
    uploaded = lambda: service.artifacts.stat(key) and get_bytes(service.artifacts, key) == b"3"  # noqa: E731
    wait_for(uploaded, "the runner to upload the step 3 checkpoint while the job runs")
    return job.id


# -- a spot VM evicted with no notice ---------------------------------------------------------


def test_a_spot_vm_evicted_with_no_notice_resumes_from_its_last_uploaded_checkpoint(
    azure: Service, sim: ArmSimulator, player: VmPlayer, code_dir: Path, tmp_path: Path
) -> None:
    job_id = stepping_job(azure, code_dir, Gate(tmp_path / "gate"), "only")
    first = azure.get(job_id).handle["vm"]

    sim.evict(first)  # no Preempt event: the runner is killed with its VM, no result written
    [done] = settle(azure, [job_id], timeout=60)

    assert done.state is JobState.SUCCEEDED
    assert done.evictions == 1
    assert player.booted() == [first, f"eph-{job_id}-1"]
    [earlier] = done.earlier_compute
    assert earlier["spot"] is True and earlier["why"] == "evicted"
    log = log_of(azure, job_id)
    assert "checkpoint: uploaded 1 changed file(s)" in log
    assert "starting at step 3" in log and "finished at step 6" in log
    assert "spot eviction notice" not in log
    assert azure.artifacts.stat(names.run_key(job_id, "evicted-0.json")) is None  # none written
    assert sim.inventory() == []


# -- Scheduled Events slow to answer its first call ------------------------------------------


def test_a_vms_runner_asks_scheduled_events_before_its_job_runs_however_slow_the_answer(
    azure: Service, sim: ArmSimulator, player: VmPlayer, code_dir: Path
) -> None:
    sim.slow_events(first_answer_s=4)

    job = azure.submit(vm_spec(code_dir)).job
    [done] = settle(azure, [job.id], timeout=60)

    assert done.state is JobState.SUCCEEDED
    result = Result.loads(get_bytes(azure.artifacts, names.run_key(job.id, names.RESULT_FILE)))
    assert sim.events_asked and min(sim.events_asked) < result.started_at.timestamp()
    assert "Scheduled Events has not answered yet" in log_of(azure, job.id)


# -- a platform reboot or redeploy ------------------------------------------------------------


def test_a_rebooted_vm_runs_its_job_again_from_its_last_uploaded_checkpoint(
    azure: Service, sim: ArmSimulator, player: VmPlayer, code_dir: Path, tmp_path: Path
) -> None:
    job_id = stepping_job(azure, code_dir, Gate(tmp_path / "gate"), "never")
    vm = azure.get(job_id).handle["vm"]

    sim.reboot(vm)
    [done] = settle(azure, [job_id], timeout=60)

    assert done.state is JobState.SUCCEEDED
    assert player.restarted == [vm] and player.down == set()
    assert [v.name for v in sim.created] == [vm]  # the same VM, not a new one
    log = log_of(azure, job_id)
    assert "started again on this compute (restart 1 of at most 2" in log
    assert "starting at step 3" in log and "finished at step 6" in log
    assert sim.inventory() == []


def test_a_vm_rebooted_more_often_than_allowed_fails_its_job_with_the_reason(
    tmp_path: Path, sim: ArmSimulator, player: VmPlayer, code_dir: Path
) -> None:
    env = azure_env(tmp_path / "home", sim, **QUICK, EPHEMERID_RUNNER_RESTARTS="0")
    with ephemerid(env) as service:
        job_id = stepping_job(service, code_dir, Gate(tmp_path / "gate"), "never")

        sim.reboot(service.get(job_id).handle["vm"])
        [done] = settle(service, [job_id], timeout=60)

    assert done.state is JobState.FAILED
    assert "the runner was started again 1 time(s) on this compute" in done.reason
    assert "EPHEMERID_RUNNER_RESTARTS" in done.reason
    assert sim.inventory() == []

"""The azure-vm backend, through the real azure-mgmt-compute client against the ARM simulator.

Nothing stands in for the client: ``ComputeManagementClient`` sends real HTTP to
``ephemerid.testing.arm`` on 127.0.0.1, which keeps the inventory of what would be billed.

A simulated VM runs nothing, so where a test needs the job to run, ``VmPlayer`` (compute/vms.py)
plays the VM: once the simulator reports a VM running, it decodes that VM's custom data and runs
the systemd unit's ExecStart from it (the real ``python -m ephemerid.runner``, with the job's URI
from the VM's own environment file) as a local process, and kills it when the VM is deleted or
evicted. Spot evictions reach that runner through the simulator's Scheduled Events endpoint.
Every job is driven to its end by the real reaper, as the timer would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from compute.cloud import ephemerid, record, settle
from compute.vms import (
    IDENTITY,
    SUBNET,
    VmPlayer,
    azure_env,
    boot_files,
    starts_at_boot,
    unit_sections,
    written_files,
)
from drive import (
    DONE_COMPUTE,
    Gate,
    held_spec,
    log_of,
    spec_for,
    wait_for,
    write_script,
)
from ephemerid import names
from ephemerid.app import build_service
from ephemerid.artifacts import get_bytes
from ephemerid.compute import ComputeStatus, Handle
from ephemerid.compute.azure_vm import ENV_FILE, TAG_DEADLINE, TAG_JOB, UNIT_FILE
from ephemerid.compute.vm_body import DEADLINE_ENV_FILE, FIREWALL_UNIT_FILE, IMDS_FILE
from ephemerid.contract import Result, RunStatus
from ephemerid.errors import BadInput, SpecError
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobState, job_id_for, utcnow
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.store import open_store
from ephemerid.testing.arm import TOKEN, ArmSimulator, compute_client

T4, A10, A100 = "Standard_NC4as_T4_v3", "Standard_NV6ads_A10_v5", "Standard_NC24ads_A100_v4"

CHECKPOINT_SCRIPT = """
import json, os, pathlib, signal, sys, time

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
gate = pathlib.Path(params["gate"])
ckpt = pathlib.Path(os.environ["EPHEMERID_CHECKPOINT_DIR"]) / "step"
step = int(ckpt.read_text()) if ckpt.exists() else 0
print(f"starting at step {step}", flush=True)

def checkpoint(signum, frame):
    ckpt.write_text(str(step))
    print(f"checkpointed at step {step}", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, checkpoint)
first = step == 0
while step < 3:
    step += 1
if first:
    (gate / "reached").touch()
    time.sleep(60)  # until evicted
while step < 6:
    step += 1
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "final.txt").write_text(f"step {step}")
print(f"finished at step {step}", flush=True)
"""

# The ephemerid process the crash tests kill: it submits one job, then handles its result.
EPHEMERID_PROCESS = """
import json, sys, time
from ephemerid import names
from ephemerid.app import build_service
from ephemerid.settings import Settings
from ephemerid.spec import validate_spec

service = build_service(Settings.from_env())
job = service.submit(validate_spec(json.loads(sys.argv[1])), key="crash").job
while True:
    if service.artifacts.stat(names.run_key(job.id, names.RESULT_FILE)):
        service.complete(job.id)
    time.sleep(0.05)
"""


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(provision_s=0.05, delete_s=0.05, retry_after="0.02") as simulator:
        yield simulator


@pytest.fixture
def env(tmp_path: Path, sim: ArmSimulator) -> dict[str, str]:
    return azure_env(tmp_path / "home", sim)


@pytest.fixture
def azure(env: dict[str, str]) -> Iterator[Service]:
    with ephemerid(env) as service:
        yield service


@pytest.fixture
def player(sim: ArmSimulator, tmp_path: Path) -> Iterator[VmPlayer]:
    with VmPlayer(sim, tmp_path / "vms") as vms:
        yield vms


def vm_spec(code_dir: Path, body: str = "print('trained on a VM')\n", **compute: Any) -> JobSpec:
    write_script(code_dir, body)
    return spec_for(code_dir, compute={"skus": [T4], **compute})


# -- the VM ---------------------------------------------------------------------------------


def test_a_job_gets_one_vm_whose_nic_and_disk_go_with_it_with_no_public_ip_and_no_secrets(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    write_script(code_dir, "print('never runs here')\n")
    spec = spec_for(
        code_dir,
        args=["--shell-me", "$(reboot)"],
        params={"api_key": "sk-do-not-ship", "note": "'; rm -rf / #"},
        compute={"skus": [T4], "max_runtime": "2h"},
    )

    job = azure.submit(spec).job

    [vm] = sim.inventory()
    body, props = vm.body, vm.body["properties"]
    assert job.state is JobState.RUNNING and job.compute_state is ComputeState.LIVE
    assert vm.name == f"eph-{job.id}-0" == job.handle["vm"]
    assert vm.location == "eastus" and vm.sku == T4 and props["priority"] == "Regular"
    assert props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    [nic] = props["networkProfile"]["networkInterfaceConfigurations"]
    assert nic["properties"]["deleteOption"] == "Delete"
    [ip] = nic["properties"]["ipConfigurations"]
    assert "publicIPAddressConfiguration" not in json.dumps(body)
    assert ip["properties"]["subnet"]["id"] == SUBNET.replace("{region}", "eastus")
    assert body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}
    assert body["tags"][TAG_JOB] == job.id
    deadline = datetime.fromisoformat(body["tags"][TAG_DEADLINE].replace("Z", "+00:00"))
    assert utcnow() + timedelta(hours=2) < deadline < utcnow() + timedelta(hours=3)
    linux = props["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert "adminPassword" not in props["osProfile"]
    custom = vm.custom_data()
    assert custom.startswith("#cloud-config\n")
    for secret in ("sk-do-not-ship", "rm -rf", "$(reboot)", "shell-me", "AccountKey", "sig="):
        assert secret not in custom
    assert TOKEN not in custom and "PRIVATE KEY" not in custom
    env, unit = boot_files(vm)
    assert env == {
        "EPHEMERID_ARTIFACTS": azure.artifacts.root_uri,
        "EPHEMERID_JOB": job.id,
        "EPHEMERID_SCHEDULED_EVENTS": sim.scheduled_events_url,
    }
    assert "EnvironmentFile=/etc/ephemerid/runner.env" in unit


def test_the_vm_reaches_an_azure_bucket_with_its_identity_and_is_never_given_a_key(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = azure_env(
        tmp_path / "home",
        sim,
        EPHEMERID_STORAGE="DefaultEndpointsProtocol=https;AccountName=ephdata;AccountKey=S3CRET==",
        EPHEMERID_STORAGE__accountName="ephdata",
    )
    settings = Settings.from_env(env)
    from ephemerid.compute.azure_vm import AzureVmCompute

    backend = AzureVmCompute.from_settings(settings, "az://")
    backend.provision(record(vm_spec(code_dir)))

    [vm] = sim.inventory()
    boot_env, _ = boot_files(vm)
    assert boot_env["EPHEMERID_ARTIFACTS"] == "az://"
    assert boot_env["EPHEMERID_STORAGE__blobServiceUri"] == "https://ephdata.blob.core.windows.net"
    assert boot_env["EPHEMERID_STORAGE__credential"] == "managedidentity"
    assert boot_env["EPHEMERID_STORAGE__clientId"] == env["EPHEMERID_VM_IDENTITY_CLIENT_ID"]
    assert "S3CRET" not in vm.custom_data()
    assert "ssh-rsa" in json.dumps(vm.body)
    assert backend.teardown(Handle("azure-vm", "x", {"vm": vm.name})) is True


def test_the_vms_user_code_runs_as_a_user_kept_from_the_runners_files_and_from_imds(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    azure.submit(vm_spec(code_dir))
    [vm] = sim.inventory()

    config = yaml.safe_load(vm.custom_data())
    modes = {f["path"]: f["permissions"] for f in config["write_files"]}
    commands = config["runcmd"]
    useradd = "useradd --system --no-create-home --home-dir /nonexistent"
    make_user = f"{useradd} --shell /usr/sbin/nologin --user-group ephemerid-job"
    rule = "-m owner --uid-owner ephemerid-job -d 169.254.169.254 -j REJECT"
    lines = [" ".join(c) for c in commands]
    first = lines.index(make_user)
    assert lines[first : first + 3] == [
        make_user,
        "systemctl enable --now ephemerid-firewall.service",  # the rule, at every boot too
        "chmod 0700 /etc/ephemerid",
    ]
    firewall = unit_sections(written_files(vm)[FIREWALL_UNIT_FILE])
    assert firewall["Service"]["ExecStart"] == [f"/usr/sbin/iptables -A OUTPUT {rule}"]
    assert "sudo" not in vm.custom_data() and "usermod" not in vm.custom_data()
    assert modes[ENV_FILE] == modes[DEADLINE_ENV_FILE] == modes[IMDS_FILE] == "0600"
    install = next(i for i, line in enumerate(lines) if " install " in line)
    assert first < install  # the user, its rule and the locked folder before the runner is there
    _, unit = boot_files(vm)
    assert f"ExecStartPre=/usr/sbin/iptables -C OUTPUT {rule}" in unit
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.endswith("--run-as ephemerid-job")
    assert "User=" not in unit  # the runner itself stays root: it reads IMDS and uploads


def test_the_runners_unit_starts_at_every_boot_and_restarts_on_failure_a_bounded_number_of_times(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    azure.submit(vm_spec(code_dir))
    [vm] = sim.inventory()

    files = written_files(vm)
    runner = unit_sections(files[UNIT_FILE])
    firewall = unit_sections(files[FIREWALL_UNIT_FILE])
    lines = [" ".join(c) for c in yaml.safe_load(vm.custom_data())["runcmd"]]

    assert runner["Install"]["WantedBy"] == ["multi-user.target"]
    assert "systemctl enable ephemerid-runner.service" in lines
    assert lines.index("systemctl enable ephemerid-runner.service") < lines.index(
        "systemctl start --no-block ephemerid-runner.service"
    )
    assert runner["Service"]["Restart"] == ["on-failure"]
    assert int(runner["Service"]["RestartSec"][0]) > 0
    assert 0 < int(runner["Unit"]["StartLimitBurst"][0]) <= 10
    assert int(runner["Unit"]["StartLimitIntervalSec"][0]) > 0
    assert "ephemerid-firewall.service" in runner["Unit"]["Requires"][0]
    assert "ephemerid-firewall.service" in runner["Unit"]["After"][0]
    assert firewall["Install"]["WantedBy"] == ["multi-user.target"]
    assert firewall["Service"]["Type"] == ["oneshot"]
    assert starts_at_boot(vm)


def test_without_a_configured_key_the_vm_gets_an_ssh_key_nobody_holds(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = {**azure_env(tmp_path / "home", sim), "EPHEMERID_VM_SSH_PUBLIC_KEY": ""}
    with ephemerid(env) as service:
        service.submit(vm_spec(code_dir))
        [vm] = sim.inventory()

    keys = vm.body["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"]
    assert [k["keyData"].split()[0] for k in keys] == ["ssh-rsa"]
    assert "PRIVATE" not in json.dumps(vm.body)


def test_the_runner_result_deletes_the_vm_and_nothing_is_left_billed(
    azure: Service, sim: ArmSimulator, player: VmPlayer, code_dir: Path
) -> None:
    job = azure.submit(vm_spec(code_dir)).job

    [done] = settle(azure, [job.id])

    assert done.state is JobState.SUCCEEDED
    assert done.compute_state is ComputeState.RELEASED
    assert "trained on a VM" in log_of(azure, job.id)
    assert player.booted() == [job.handle["vm"]]
    assert sim.inventory() == []
    deletes = [r for r in sim.requests if r.method == "DELETE"]
    assert [r.query.get("forceDeletion") for r in deletes] == ["false"]
    confirm = sim.requests[sim.requests.index(deletes[0]) :]
    assert any(r.method == "GET" and r.path.endswith(job.handle["vm"]) for r in confirm)
    assert (done.sku, done.spot, done.price_per_hour) == (T4, False, 0.526)
    assert done.held_s is not None and done.cost_usd == pytest.approx(
        done.held_s / 3600 * 0.526, abs=1e-6
    )
    assert done.to_json()["cost_usd"] == done.cost_usd


def test_a_retried_provision_finds_the_vm_it_started_instead_of_starting_another(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    backend = azure.backends["azure-vm"]
    job = record(vm_spec(code_dir))

    first = backend.provision(job)
    again = backend.provision(job)

    assert again == first
    assert len(sim.created) == 1
    assert [r.method for r in sim.requests].count("PUT") == 1


def test_poll_says_starting_running_then_gone(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    backend = azure.backends["azure-vm"]
    job = record(vm_spec(code_dir))
    sim.provision_s = 0.5
    handle = Handle("azure-vm", job.id, {"vm": f"eph-{job.id}-0"})
    provisioning = threading.Thread(target=backend.provision, args=(job,))
    provisioning.start()
    wait_for(sim.inventory, "the VM to be created")

    starting = backend.poll(handle)
    provisioning.join()
    running = backend.poll(handle)
    backend.teardown(handle)

    assert (starting, running) == (ComputeStatus.STARTING, ComputeStatus.RUNNING)
    assert backend.poll(handle) is ComputeStatus.GONE


# -- crashes --------------------------------------------------------------------------------

CRASH_STEPS = {
    "after the record is created": "GET",  # held: nothing has reached ARM's PUT yet
    "after the PUT is sent": "PUT",
    "after the VM is live": None,
    "during teardown": "DELETE",
}


@pytest.mark.parametrize("step", list(CRASH_STEPS))
def test_killing_ephemerid_at_any_step_leaves_no_vm_and_a_terminal_job(
    step: str, env: dict[str, str], sim: ArmSimulator, tmp_path: Path, code_dir: Path
) -> None:
    spec = vm_spec(code_dir)
    job_id = job_id_for("train", "crash")
    held = CRASH_STEPS[step]
    runs = step != "after the record is created"  # a VM made mid-PUT is adopted, and runs
    with VmPlayer(sim, tmp_path / "vms") if runs else nullcontext():
        if held:
            sim.hold(held)
        process = subprocess.Popen(
            [sys.executable, "-c", EPHEMERID_PROCESS, spec.model_dump_json()],
            env={**os.environ, **env},
            stderr=subprocess.PIPE,
        )
        store = open_store(Settings.from_env(env).store_url)
        if held:
            wait_for(lambda: sim.held() or process.poll() is not None, f"a held {held}")
        else:
            wait_for(lambda: _state(store, job_id) is JobState.RUNNING, "the job to run")
        process.kill()
        _, err = process.communicate()
        assert process.returncode == -9, err
        sim.release_holds()
        store.close()
        with ephemerid(env) as restarted:  # a new ephemerid on the same store and simulator
            [job] = settle(restarted, [job_id], now=utcnow() + timedelta(seconds=25))

    assert sim.inventory() == []
    assert len(sim.created_for(TAG_JOB, job_id)) == (0 if held == "GET" else 1)
    assert job.compute_state in DONE_COMPUTE
    if runs:
        assert job.state is JobState.SUCCEEDED
    else:
        assert job.state is JobState.FAILED
        assert job.reason == "provisioning did not finish in time"


def _state(store: Any, job_id: str) -> JobState | None:
    try:
        return store.get(job_id).state  # type: ignore[no-any-return]
    except Exception:
        return None


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("connection_resets")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_with_a_fifth_of_arm_requests_failing_100_jobs_all_end_and_nothing_is_billed(
    env: dict[str, str], sim: ArmSimulator, tmp_path: Path, code_dir: Path
) -> None:
    spec = vm_spec(code_dir, "print('ok')\n")
    sim.faults(0.2)
    with ephemerid(env) as service, VmPlayer(sim, tmp_path / "vms"):
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda i: service.submit(spec, key=f"job-{i}").job.id, range(100)))
        jobs = settle(service, ids, timeout=90)
        requests = len(sim.requests)
        sim.faults(0.0)
        assert sim.inventory() == []

    assert len(set(ids)) == 100
    assert all(j.state.terminal for j in jobs)
    assert all(len(sim.created_for(TAG_JOB, j.id)) <= 1 for j in jobs)
    states = {s: sum(j.state is s for j in jobs) for s in JobState}
    assert states[JobState.SUCCEEDED] >= 90, states
    assert requests > 1000


@pytest.mark.usefixtures("connection_resets")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_teardown_retries_past_the_sdks_own_retries_and_confirms_the_vm_is_gone(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    backend = azure.backends["azure-vm"]
    handle = backend.provision(record(vm_spec(code_dir)))
    sim.fail_next("throttle", method="DELETE", count=12)  # the SDK gives up after 10 retries
    sim.fail_next("reset", method="GET", count=2)

    assert backend.teardown(handle) is True

    assert sim.inventory() == []
    assert [r.method for r in sim.requests].count("DELETE") >= 13


def test_a_teardown_that_cannot_be_confirmed_stays_owed_until_the_reaper_confirms_it(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(env, EPHEMERID_PROVISION_TIMEOUT_S="0.3") as service:
        job = service.submit(vm_spec(code_dir)).job
        sim.delete_s = 1.0

        cancelled = service.cancel(job.id)

        assert cancelled.state is JobState.CANCELLED
        assert cancelled.compute_state is ComputeState.LIVE
        assert cancelled.teardown_attempts == 1
        assert [v.state for v in sim.inventory()] == ["Deleting"]
        [done] = settle(service, [job.id], timeout=10)
        assert done.compute_state is ComputeState.RELEASED
        assert sim.inventory() == []


# -- what ARM does besides answering ---------------------------------------------------------


def test_a_stale_404_just_after_the_create_does_not_end_the_job(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(env, EPHEMERID_ARM_READ_SETTLE_S="60") as service:
        job = service.submit(vm_spec(code_dir)).job
        sim.stale_reads(10)  # every GET misses the VM for a while, as a lagging replica would

        reap(service)

        assert service.get(job.id).state is JobState.RUNNING
        assert [v.name for v in sim.inventory()] == [job.handle["vm"]]


def test_a_404_is_believed_only_when_every_get_in_a_row_says_so(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    backend = azure.backends["azure-vm"]
    handle = backend.provision(record(vm_spec(code_dir)))

    sim.stale_reads(2)
    assert backend.poll(handle) is ComputeStatus.RUNNING  # the third GET found it
    sim.stale_reads(10)
    assert backend.poll(handle) is ComputeStatus.GONE  # four 404s in a row: bounded, believed


def test_a_vm_whose_provisioning_failed_while_it_still_runs_is_not_gone(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    job = azure.submit(vm_spec(code_dir)).job
    backend = azure.backends["azure-vm"]
    handle = Handle("azure-vm", job.id, job.handle)

    sim.fail_provisioning(job.handle["vm"], power="running")
    reap(azure)

    assert backend.poll(handle) is ComputeStatus.RUNNING
    assert azure.get(job.id).state is JobState.RUNNING
    sim.fail_provisioning(job.handle["vm"], power="deallocated")
    assert backend.poll(handle) is ComputeStatus.GONE


TRANSIENT_CREATES = {
    "a retryable code on the create's operation": lambda sim: sim.refuse(
        "InternalExecutionError", on="operation", times=1
    ),
    "a 5xx past the SDK's own retries": lambda sim: sim.fail_next("error", method="PUT", count=11),
    "a 429 past the SDK's own retries": lambda sim: sim.fail_next(
        "throttle", method="PUT", count=11
    ),
}


@pytest.mark.parametrize("failure", list(TRANSIENT_CREATES))
def test_a_create_that_fails_transiently_is_tried_again_at_the_same_placement(
    azure: Service, sim: ArmSimulator, code_dir: Path, failure: str
) -> None:
    TRANSIENT_CREATES[failure](sim)

    job = azure.submit(vm_spec(code_dir)).job

    assert job.state is JobState.RUNNING, job.reason
    assert job.handle["region"] == "eastus"
    assert [v.location for v in sim.inventory()] == ["eastus"]


def test_a_create_that_keeps_failing_transiently_moves_on_after_a_bounded_number_of_tries(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    sim.refuse("InternalExecutionError", region="eastus", on="operation")

    job = azure.submit(vm_spec(code_dir)).job

    assert job.state is JobState.RUNNING, job.reason
    assert [v.location for v in sim.created] == ["eastus"] * 4 + ["westus2"]
    assert [v.location for v in sim.inventory()] == ["westus2"]
    methods = [r.method for r in sim.requests if r.method in ("PUT", "DELETE")]
    assert methods[-3:] == ["PUT", "DELETE", "PUT"]  # the failed eastus VM went before westus2


def test_a_409_on_deleting_a_refused_vm_is_retried_and_placement_goes_on(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    sim.refuse("AllocationFailed", region="eastus", nested=True)
    sim.fail_next("conflict", method="DELETE", count=2)  # another operation is in progress

    job = azure.submit(vm_spec(code_dir)).job

    assert job.state is JobState.RUNNING, job.reason
    assert [v.location for v in sim.inventory()] == ["westus2"]


def test_teardown_retries_a_409_conflict_until_the_vm_is_gone(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    backend = azure.backends["azure-vm"]
    handle = backend.provision(record(vm_spec(code_dir)))
    sim.fail_next("conflict", method="DELETE", count=3)

    assert backend.teardown(handle) is True

    assert sim.inventory() == []


def test_a_long_retry_after_on_the_create_makes_the_job_wait_it_out_instead_of_the_call(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    sim.fail_next("throttle", method="PUT", retry_after="40")

    job = azure.submit(vm_spec(code_dir)).job

    assert job.state is JobState.WAITING_FOR_CAPACITY
    assert job.reason.startswith("waiting for ARM (next try in 40s)")
    assert "TooManyRequests" in job.reason
    assert job.next_try_at is not None
    assert timedelta(seconds=35) < job.next_try_at - utcnow() <= timedelta(seconds=40)
    assert [r.method for r in sim.requests].count("PUT") == 1  # not slept on and sent again
    assert sim.inventory() == []
    assert azure.start(job.id).state is JobState.RUNNING  # the next try, once it is time


def test_a_long_retry_after_on_teardown_leaves_it_owed_instead_of_holding_the_call(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    backend = azure.backends["azure-vm"]
    handle = backend.provision(record(vm_spec(code_dir)))
    sim.fail_next("throttle", method="DELETE", retry_after="40")

    assert backend.teardown(handle) is False
    assert [r.method for r in sim.requests].count("DELETE") == 1
    assert backend.teardown(handle) is True  # the reaper's next pass
    assert sim.inventory() == []


# -- placement ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "nested"),
    [
        ("SkuNotAvailable", False),
        ("AllocationFailed", False),
        ("AllocationFailed", True),
        ("ZonalAllocationFailed", True),
        ("OverconstrainedAllocationRequest", False),
        ("OperationNotAllowed", True),
    ],
)
def test_a_capacity_or_quota_refusal_moves_on_to_the_next_region(
    azure: Service, sim: ArmSimulator, code_dir: Path, code: str, nested: bool
) -> None:
    sim.refuse(code, region="eastus", nested=nested)

    job = azure.submit(vm_spec(code_dir)).job

    assert job.state is JobState.RUNNING
    assert job.handle["region"] == "westus2"
    assert [v.location for v in sim.inventory()] == ["westus2"]


def test_placement_moves_past_a_capacity_refusal_and_a_quota_refusal_to_the_third_sku(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    sim.refuse("AllocationFailed", sku=T4, nested=True)
    sim.refuse("OperationNotAllowed", sku=A10)
    with ephemerid(env, EPHEMERID_COMPUTE_REGIONS="eastus") as service:
        job = service.submit(vm_spec(code_dir, skus=[T4, A10, A100])).job

        assert job.state is JobState.RUNNING
        assert (job.sku, job.handle["region"], job.spot) == (A100, "eastus", False)
        assert [v.sku for v in sim.created] == [T4, A100]  # the quota refusal made nothing
        assert [v.sku for v in sim.inventory()] == [A100]  # the failed T4 VM was deleted


def test_spot_prefer_falls_back_to_on_demand(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    sim.refuse("AllocationFailed", spot=True)

    job = azure.submit(vm_spec(code_dir, spot="prefer")).job

    assert job.state is JobState.RUNNING and job.spot is False
    assert [v.spot for v in sim.created] == [True, True, False]


def test_spot_only_without_spot_capacity_waits_then_fails_listing_every_attempt(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    sim.refuse("AllocationFailed", spot=True)
    limits = {"EPHEMERID_CAPACITY_MAX_WAIT_S": "0.8", "EPHEMERID_CAPACITY_BACKOFF_S": "0.3"}
    with ephemerid(env, **limits) as service:
        job = service.submit(vm_spec(code_dir, skus=[T4, A10], spot="only")).job
        puts = len(sim.created)

        assert job.state is JobState.WAITING_FOR_CAPACITY
        assert job.compute_state is ComputeState.NONE
        assert job.reason.startswith("waiting for capacity (next try in ")
        assert job.next_try_at is not None and job.waiting_since is not None
        assert service.dispatch_waiting() == []  # backing off: not tried again yet
        assert len(sim.created) == puts == 4
        [done] = settle(service, [job.id], timeout=10)

    assert done.state is JobState.FAILED
    assert "no capacity after waiting" in done.reason
    for sku in (T4, A10):
        for region in ("eastus", "westus2"):
            assert f"{sku} spot in {region}: AllocationFailed" in done.reason
    assert len(sim.created) > puts
    assert all(v.spot for v in sim.created)
    assert sim.inventory() == []


# -- eviction -------------------------------------------------------------------------------


def test_a_preempted_spot_job_checkpoints_and_resumes_on_a_second_vm(
    azure: Service, sim: ArmSimulator, player: VmPlayer, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, CHECKPOINT_SCRIPT, "train.py")
    spec = spec_for(
        code_dir, "train.py", params=gate.params, compute={"spot": "only", "skus": [T4]}
    )
    job = azure.submit(spec).job
    first = job.handle["vm"]
    wait_for((gate.path / "reached").exists, "the first run to reach step 3")

    sim.preempt(first, evict_after_s=30)
    [done] = settle(azure, [job.id], timeout=40)

    assert done.state is JobState.SUCCEEDED
    assert done.evictions == 1
    assert done.handle["vm"] == f"eph-{job.id}-1"
    assert player.booted() == [first, done.handle["vm"]]
    assert sim.inventory() == []
    log = log_of(azure, job.id)
    assert "spot eviction notice" in log
    assert "checkpointed at step 3" in log
    assert "starting at step 3" in log and "finished at step 6" in log
    evicted = Result.loads(get_bytes(azure.artifacts, names.run_key(job.id, "evicted-1.json")))
    assert evicted.status is RunStatus.EVICTED
    assert get_bytes(azure.artifacts, names.run_key(job.id, "checkpoint/step")) == b"3"
    [earlier] = done.earlier_compute
    assert earlier["spot"] is True and earlier["why"] == "evicted" and earlier["cost_usd"] > 0
    assert done.cost_usd is not None and done.cost_usd > earlier["cost_usd"]


# -- cancel ---------------------------------------------------------------------------------


def test_cancelling_while_the_vm_is_being_created_gives_it_back(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    sim.provision_s = 2.0
    spec = vm_spec(code_dir)
    with ThreadPoolExecutor(1) as pool:
        submitting = pool.submit(azure.submit, spec, key="slow")
        wait_for(sim.inventory, "the VM to be created")

        cancelled = azure.cancel(job_id_for("train", "slow"))

        assert cancelled.state is JobState.CANCELLED
        assert cancelled.compute_state is ComputeState.RELEASED
        assert sim.inventory() == []
        submitting.result()

    after = azure.store.get(cancelled.id)
    assert (after.state, after.compute_state) == (JobState.CANCELLED, ComputeState.RELEASED)
    assert sim.inventory() == []


def test_cancelling_a_running_job_deletes_its_vm_and_stops_its_runner(
    azure: Service, sim: ArmSimulator, player: VmPlayer, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = azure.submit(held_spec(code_dir, gate, compute={"skus": [T4]})).job
    script = gate.pid()

    cancelled = azure.cancel(job.id)

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.compute_state is ComputeState.RELEASED
    assert sim.inventory() == []
    wait_for(lambda: not Path(f"/proc/{script}").exists(), "the VM's runner to die with it")


# -- strays, settings, CLI ------------------------------------------------------------------


def test_the_reaper_deletes_a_tagged_vm_no_job_owns_and_leaves_untagged_vms_alone(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    stray = azure.backends["azure-vm"].provision(record(vm_spec(code_dir), key="elsewhere"))
    client = compute_client(sim.endpoint)
    other = {"location": "eastus", "properties": {"hardwareProfile": {"vmSize": T4}}}
    client.virtual_machines.begin_create_or_update("eph-jobs", "not-ours", other).result()

    actions = reap(azure)

    assert actions == [f"{stray.job_id}: azure-vm compute with no job -> torn down"]
    assert [v.name for v in sim.inventory()] == ["not-ours"]


def test_azure_vm_is_configured_only_when_its_settings_are_and_never_half(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    local = build_service(Settings.from_env({"EPHEMERID_HOME": str(tmp_path / "local")}))
    write_script(code_dir, "print('x')\n")

    assert sorted(local.backends) == ["local"]
    with pytest.raises(SpecError, match=r"compute\.backend 'azure-vm' is not configured"):
        local.submit(spec_for(code_dir, compute={"backend": "azure-vm"}))
    half = {"EPHEMERID_AZURE_SUBSCRIPTION_ID": "sub", "EPHEMERID_COMPUTE_REGIONS": "eastus"}
    with pytest.raises(BadInput, match="set EPHEMERID_COMPUTE_RESOURCE_GROUP, EPHEMERID_COMPU"):
        Settings.from_env(half)
    env = azure_env(tmp_path / "home", sim, EPHEMERID_VM_IMAGE="ubuntu")
    with pytest.raises(BadInput, match="write publisher:offer:sku:version"):
        build_service(Settings.from_env(env))


def test_a_price_table_setting_replaces_the_shipped_prices(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path, tmp_path: Path
) -> None:
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"skus": {T4: {"on_demand": 2.0, "spot": 0.5}}}))
    with ephemerid(env, EPHEMERID_PRICE_TABLE=str(table)) as service:
        job = service.submit(vm_spec(code_dir, spot="only")).job
        assert job.price_per_hour == 0.5
    table.write_text("{not json")
    with pytest.raises(BadInput, match=r"price table .* is not valid"):
        build_service(Settings.from_env({**env, "EPHEMERID_PRICE_TABLE": str(table)}))


def test_eph_submit_with_backend_azure_vm_runs_on_a_vm_and_status_shows_its_cost(
    env: dict[str, str], sim: ArmSimulator, player: VmPlayer, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "print('hello from the VM')\n")
    cli_env = {**os.environ, **env, "COLUMNS": "300", "NO_COLOR": "1"}
    del cli_env["EPHEMERID_BACKEND"]
    eph = Path(sys.executable).with_name("eph")
    flags = ["--code", str(code_dir), "--entrypoint", "job.py", "--backend", "azure-vm"]

    submitted = subprocess.run(
        [str(eph), "submit", *flags, "--json"], env=cli_env, capture_output=True, text=True
    )
    job = json.loads(submitted.stdout)
    status = subprocess.run(
        [str(eph), "status", job["id"]], env=cli_env, capture_output=True, text=True
    )

    assert submitted.returncode == 0, submitted.stderr
    assert (job["state"], job["compute_state"], job["backend"]) == (
        "SUCCEEDED",
        "released",
        "azure-vm",
    )
    assert job["sku"] == T4 and job["cost_usd"] > 0
    assert f"{T4} on-demand" in status.stderr  # eph prints for people on stderr
    assert f"${job['cost_usd']:.4f}" in status.stderr
    assert sim.inventory() == []


# -- the job's environment ------------------------------------------------------------------

REGISTRY = "crephemerid.azurecr.io"


def test_a_requirements_job_on_a_vm_brings_its_environment_in_the_launch_not_in_cloud_init(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    write_script(code_dir, "print('trained')\n")
    (code_dir / "requirements.txt").write_text("ephsecretpkg==1.0 ; python_version > '3'\n")
    spec = spec_for(
        code_dir, compute={"skus": [T4]}, environment={"requirements": "requirements.txt"}
    )

    job = azure.submit(spec).job

    [vm] = sim.inventory()
    custom = vm.custom_data()
    for text in ("ephsecretpkg", "requirements.txt", "python_version", str(job.environment)):
        assert text not in custom
    launch = json.loads(get_bytes(azure.artifacts, names.run_key(job.id, names.JOB_FILE)))
    assert launch["environment"]["id"] == job.environment
    assert launch["environment"]["requirements"] == "requirements.txt"
    boot_env, _ = boot_files(vm)
    assert "EPHEMERID_VM_REGISTRY" not in boot_env  # no registry: nothing about images either


def test_an_image_on_azure_vm_is_refused_at_submit_where_no_registry_is_configured(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    spec = vm_spec(code_dir)
    spec = spec.model_copy(
        update={
            "environment": spec_for(
                code_dir, environment={"image": f"{REGISTRY}/train:1.4"}
            ).environment
        }
    )

    with pytest.raises(SpecError, match="none is configured \\(EPHEMERID_VM_REGISTRY\\)"):
        azure.submit(spec)

    assert sim.inventory() == []  # nothing rented


def test_an_image_from_a_registry_that_is_not_acr_is_refused_at_submit(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = azure_env(tmp_path / "home", sim, EPHEMERID_VM_REGISTRY=REGISTRY)
    write_script(code_dir, "print('x')\n")
    spec = spec_for(code_dir, compute={"skus": [T4]}, environment={"image": "pytorch/pytorch:2.5"})

    with ephemerid(env) as service, pytest.raises(SpecError) as refused:
        service.submit(spec)

    assert "is on docker.io: azure-vm pulls only from Azure Container Registry" in str(
        refused.value
    )
    assert f"push or import it to {REGISTRY}" in str(refused.value)
    assert sim.inventory() == []


def test_an_image_job_tells_the_vm_its_registry_and_identity_and_nothing_of_the_image(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = azure_env(tmp_path / "home", sim, EPHEMERID_VM_REGISTRY=REGISTRY)
    image = f"{REGISTRY}/ephimage:1.4"
    write_script(code_dir, "print('x')\n")
    spec = spec_for(code_dir, compute={"skus": [T4]}, environment={"image": image})

    with ephemerid(env) as service:
        job = service.submit(spec).job
        launch = json.loads(get_bytes(service.artifacts, names.run_key(job.id, names.JOB_FILE)))
        [vm] = sim.inventory()

    assert "ephimage" not in vm.custom_data()
    boot_env, _ = boot_files(vm)
    assert boot_env["EPHEMERID_VM_REGISTRY"] == REGISTRY
    assert boot_env["EPHEMERID_VM_IDENTITY_CLIENT_ID"] == env["EPHEMERID_VM_IDENTITY_CLIENT_ID"]
    assert launch["environment"] == {**launch["environment"], "id": job.environment, "image": image}

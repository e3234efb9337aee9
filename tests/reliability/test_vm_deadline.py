"""azure-vm's deadline of its own, the reaper acting on it, adopting a VM a crashed PUT made,
and no query string (a SAS token) ever reaching a VM.

The real azure-mgmt-compute client talks to the ARM simulator; ``VmPlayer`` plays each VM: its
runner, and its deadline timer's self-delete (the ``imds.py`` the VM's custom data carries, run
without site-packages against the VM's own metadata service in the simulator).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from compute.cloud import ephemerid, record, settle
from compute.test_azure_vm import EPHEMERID_PROCESS, T4, _state, vm_spec
from compute.vms import GROUP, VmPlayer, azure_env, env_file, written_files
from drive import Gate, held_spec, wait_for
from ephemerid import names
from ephemerid.artifacts import get_bytes
from ephemerid.compute.azure_vm import TAG_DEADLINE, TAG_JOB, AzureVmCompute
from ephemerid.compute.vm_body import DEADLINE_ENV_FILE, ENV_FILE
from ephemerid.contract import Result, RunStatus
from ephemerid.errors import BadInput, ComputeError
from ephemerid.reaper import reap
from ephemerid.record import JobState, job_id_for, utcnow
from ephemerid.settings import Settings
from ephemerid.store import open_store
from ephemerid.testing.arm import SUBSCRIPTION, ArmSimulator, compute_client

# Small margins, so that a deadline (max runtime + 1 + 1 + heartbeat timeout) comes in seconds.
QUICK = {"EPHEMERID_PROVISION_TIMEOUT_S": "1", "EPHEMERID_GRACE_S": "1"}
SAS = "sv=2022-11-02&ss=b&sig=c2VjcmV0"


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(provision_s=0.05, delete_s=0.05, retry_after="0.02") as simulator:
        yield simulator


def vm_path(name: str) -> str:
    providers = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers"
    return f"{providers}/Microsoft.Compute/virtualMachines/{name}"


def make_vm(sim: ArmSimulator, name: str, tags: dict[str, str]) -> None:
    body = {"location": "eastus", "tags": tags, "properties": {"hardwareProfile": {"vmSize": T4}}}
    compute_client(sim.endpoint).virtual_machines.begin_create_or_update(GROUP, name, body).result()


# -- the VM's own deadline -------------------------------------------------------------------


def test_a_vm_nobody_tears_down_deletes_itself_at_its_deadline_with_its_own_identity(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = azure_env(tmp_path / "home", sim, **QUICK, EPHEMERID_HEARTBEAT_TIMEOUT_S="1")
    spec = held_spec(code_dir, Gate(tmp_path / "gate"), compute={"skus": [T4], "max_runtime": 1})
    with ephemerid(env) as service, VmPlayer(sim, tmp_path / "vms"):
        job = service.submit(spec).job  # and then no completion handler, no reaper: nobody
        vm = job.handle["vm"]

        wait_for(lambda: sim.vm(vm) is None, "the VM to delete itself", timeout=60)

        deletes = [r for r in sim.requests if r.method == "DELETE"]
        assert deletes and {r.caller for r in deletes} == {f"identity of {vm}"}
        assert {r.path for r in deletes} == {vm_path(vm)}
        assert {r.query.get("forceDeletion") for r in deletes} == {"false"}
        assert service.store.get(job.id).state is JobState.RUNNING  # ephemerid did nothing


def test_the_vms_identity_may_delete_a_vm_of_its_group_and_do_nothing_else(
    sim: ArmSimulator,
) -> None:
    make_vm(sim, "vm-a", {})
    token_url = (
        f"{sim.imds_url('vm-a')}/metadata/identity/oauth2/token?api-version=2018-02-01"
        "&resource=https://management.azure.com/"
    )
    ask = urllib.request.Request(token_url, headers={"Metadata": "true"})
    with urllib.request.urlopen(ask) as answer:
        token = json.load(answer)["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    read = urllib.request.Request(f"{sim.endpoint}{vm_path('vm-a')}?api-version=1", headers=auth)

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(read)

    refused.value.close()
    assert refused.value.code == 403
    assert sim.vm("vm-a") is not None


def test_a_runner_that_boots_late_stops_by_its_vms_deadline_and_writes_its_result_first(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = azure_env(tmp_path / "home", sim, **QUICK, EPHEMERID_HEARTBEAT_TIMEOUT_S="30")
    spec = held_spec(code_dir, Gate(tmp_path / "gate"), compute={"skus": [T4], "max_runtime": 2})
    with ephemerid(env) as service, VmPlayer(sim, tmp_path / "vms", boot_after_s=4):
        job = service.submit(spec).job  # its runner must stop by +3s (31s before the deadline)
        [done] = settle(service, [job.id], timeout=60)
        result = Result.loads(get_bytes(service.artifacts, names.run_key(job.id, "result.json")))

    assert done.state is JobState.TIMED_OUT
    assert result.status is RunStatus.TIMED_OUT
    assert "the latest its VM's deadline allows" in done.reason
    assert sim.inventory() == []


# -- the reaper and the deadline tag ---------------------------------------------------------


def test_the_reaper_deletes_a_vm_past_its_deadline_even_if_its_job_record_says_running(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(azure_env(tmp_path / "home", sim)) as service:
        job = service.submit(vm_spec(code_dir)).job
        past = (utcnow() - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
        make_vm(sim, f"eph-{job.id}-7", {TAG_JOB: job.id, TAG_DEADLINE: past})  # another store's

        actions = reap(service)

        assert f"{job.id}: azure-vm compute with job RUNNING, past its deadline {past}" in " ".join(
            actions
        )
        assert [v.name for v in sim.inventory()] == [job.handle["vm"]]  # its own VM is kept
        assert service.store.get(job.id).state is JobState.RUNNING


# -- a crash in the middle of the PUT --------------------------------------------------------


def test_a_vm_whose_put_outlived_its_ephemerid_is_adopted_and_its_job_completes(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = azure_env(tmp_path / "home", sim)
    job_id = job_id_for("train", "crash")
    gate = Gate(tmp_path / "gate")  # the VM's job holds until the job is adopted
    spec = held_spec(code_dir, gate, compute={"skus": [T4]})
    with VmPlayer(sim, tmp_path / "vms"):
        sim.hold("PUT")
        process = subprocess.Popen(
            [sys.executable, "-c", EPHEMERID_PROCESS, spec.model_dump_json()],
            env={**os.environ, **env},
        )
        wait_for(lambda: sim.held() or process.poll() is not None, "a held PUT")
        process.kill()
        process.wait()
        sim.release_holds()
        store = open_store(Settings.from_env(env).store_url)
        assert _state(store, job_id) is JobState.PROVISIONING
        store.close()
        with ephemerid(env) as restarted:  # provisioning has timed out by then: adopt, not fail
            actions = reap(restarted, utcnow() + timedelta(seconds=25))
            adopted = restarted.store.get(job_id)
            gate.open()
            [done] = settle(restarted, [job_id])

    assert f"{job_id}: provisioning outlived its caller; found its compute -> RUNNING" in actions
    assert adopted.state is JobState.RUNNING and adopted.handle["vm"] == f"eph-{job_id}-0"
    assert adopted.price_per_hour == 0.526
    assert done.state is JobState.SUCCEEDED
    assert len(sim.created_for(TAG_JOB, job_id)) == 1
    assert [r.method for r in sim.requests].count("PUT") == 1
    assert gate.starts() == 1  # the work done while the record said PROVISIONING was kept
    assert sim.inventory() == []


# -- no query string reaches a VM ------------------------------------------------------------


@pytest.mark.parametrize(
    "setting",
    [
        "EPHEMERID_STORAGE__blobServiceUri",
        "EPHEMERID_STORAGE__queueServiceUri",
        "EPHEMERID_STORAGE__tableServiceUri",
        "EPHEMERID_ARTIFACTS",
    ],
)
def test_a_storage_url_setting_with_a_query_string_is_refused_at_start_naming_it(
    setting: str,
) -> None:
    with pytest.raises(BadInput) as refused:
        Settings.from_env({setting: f"https://ephdata.blob.core.windows.net/?{SAS}"})

    assert f"{setting}='https://ephdata.blob.core.windows.net/?…' carries a query string" in str(
        refused.value
    )
    assert "sig=" not in str(refused.value)


def test_the_vms_custom_data_holds_no_query_string_and_a_bucket_with_one_is_never_sent(
    tmp_path: Path, sim: ArmSimulator, code_dir: Path
) -> None:
    env = azure_env(tmp_path / "home", sim, EPHEMERID_STORAGE__accountName="ephdata")
    settings = Settings.from_env(env)
    AzureVmCompute.from_settings(settings, "az://").provision(record(vm_spec(code_dir)))
    [vm] = sim.inventory()
    files = written_files(vm)
    told = {**env_file(files[ENV_FILE]), **env_file(files[DEADLINE_ENV_FILE])}
    with_query = {k: v for k, v in told.items() if "?" in v}

    assert with_query == {"EPHEMERID_SCHEDULED_EVENTS": sim.scheduled_events_url}
    assert sim.scheduled_events_url.partition("?")[2] == "api-version=2020-07-01"
    assert "sig=" not in vm.custom_data()
    with pytest.raises(ComputeError, match=r"carries a query string"):
        AzureVmCompute.from_settings(settings, f"az://runs?{SAS}").provision(
            record(vm_spec(code_dir), key="with-sas")
        )
    assert len(sim.created) == 1

"""The azure-ml backend, with the real ``MLClient`` against the local ARM simulator.

What runs for real: ephemerid's service, the backend, ``azure-ai-ml`` and ``azure-core`` over HTTP
to ``ephemerid.testing.arm`` (whose ``AmlJobs`` answers the job calls: PUT, GET, list, cancel and
its long-running operation), and the runner, one process per rank, started by ``AmlPlayer`` from
the command and environment the PUT carried. What cannot reasonably be simulated here, and is
not: Azure ML scaling the cluster's nodes (``min_instances=0`` and the idle scale-down), building
or pulling the environment's image, mounting data, the cluster's managed identity reaching
Storage, Azure AD and role checks (a static token; a 403 is scripted), run history and the
studio, real quotas and timings. docs/azure-ml.md lists the same.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import isodate
import pytest

from compute.aml import CLUSTER, ENVIRONMENT, GROUP, WORKSPACE, AmlPlayer, aml_env, register
from compute.cloud import ephemerid, record, settle
from conftest import EXAMPLES
from drive import (
    Gate,
    held_spec,
    log_of,
    run,
    spec_for,
    text_of,
    wait_for,
    wait_gone,
    write_script,
)
from ephemerid import names
from ephemerid.app import build_service
from ephemerid.artifacts import open_artifacts, put_bytes
from ephemerid.compute import ComputeStatus, Handle
from ephemerid.compute.aml_environment import RunnerEnvironment
from ephemerid.compute.azure_ml import COMMAND, TAG_JOB, status_of
from ephemerid.errors import BadInput, SpecError
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.testing.aml import Cluster
from ephemerid.testing.arm import ArmSimulator
from ephemerid.testing.settle import settle as settle_jobs

T4_PRICE = 0.526  # the shipped price table's Standard_NC4as_T4_v3, the cluster's default SKU

DISTRIBUTED = EXAMPLES / "distributed"  # examples/distributed/train.py: DDP over gloo on the CPU


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(aml_queue_s=0.05, aml_cancel_s=0.05) as simulator:
        yield simulator


@pytest.fixture
def env(tmp_path: Path, sim: ArmSimulator) -> dict[str, str]:
    return aml_env(tmp_path / "home", sim)


@pytest.fixture
def azure(env: dict[str, str]) -> Iterator[Service]:
    with ephemerid(env) as service:
        yield service


@pytest.fixture
def player(sim: ArmSimulator, tmp_path: Path) -> Iterator[AmlPlayer]:
    with AmlPlayer(sim, tmp_path / "nodes") as nodes:
        yield nodes


def ml_spec(
    code_dir: Path,
    body: str = "print('trained on Azure ML')\n",
    fields: dict[str, Any] | None = None,
    **compute: Any,
) -> JobSpec:
    write_script(code_dir, body)
    return spec_for(code_dir, compute=compute, **(fields or {}))


def submit_once(env: dict[str, str], spec: JobSpec) -> JobRecord:
    """Submit on a service that cannot list its own compute (so no cleanup asks it to)."""
    service = build_service(Settings.from_env(env))
    try:
        return service.submit(spec).job
    finally:
        service.close()


def puts(sim: ArmSimulator) -> list[Any]:
    """The job submissions (not the environment's registration)."""
    return [r for r in sim.requests if r.method == "PUT" and "/jobs/" in r.path]


def status(sim: ArmSimulator, name: str) -> str:
    job = sim.ml.job(name)
    return job.status if job else "(no such job)"


def started(sim: ArmSimulator, name: str) -> None:
    wait_for(lambda: status(sim, name) == "Running", f"Azure ML job {name} to run")


# -- a job's life ---------------------------------------------------------------------------


def test_a_job_runs_on_the_cluster_its_result_completes_it_and_the_bill_counts_the_idle_tail(
    azure: Service, sim: ArmSimulator, player: AmlPlayer, code_dir: Path
) -> None:
    body = """
    import os, pathlib
    print('trained on Azure ML', flush=True)
    pathlib.Path(os.environ['EPHEMERID_OUTPUT_DIR'], 'model.txt').write_text('weights')
    """
    job = azure.submit(ml_spec(code_dir, body, gpus=1)).job
    assert job.state is JobState.RUNNING and job.compute_state is ComputeState.LIVE

    [done] = settle(azure, [job.id])

    assert done.state is JobState.SUCCEEDED, done.reason
    assert done.compute_state is ComputeState.RELEASED
    assert "trained on Azure ML" in log_of(azure, job.id)
    assert done.outputs == [f"runs/{job.id}/outputs/model.txt"]
    [aml_job] = sim.ml.created
    assert player.played() == [aml_job.name] == [f"eph-{job.id}-0"]
    assert aml_job.history == [
        "NotStarted",
        "Starting",
        "Preparing",
        "Queued",
        "Running",
        "Finalizing",
        "Completed",
    ]
    assert "POST" not in [r.method for r in sim.requests]  # Finalizing is not done: no cancel
    assert (done.sku, done.spot, done.price_per_hour) == ("Standard_NC4as_T4_v3", False, T4_PRICE)
    assert done.billed_tail_s == 120.0
    assert done.held_s is not None and done.compute_requested_at and done.released_at
    held = (done.released_at - done.compute_requested_at).total_seconds()
    assert done.held_s == pytest.approx(held + 120.0)
    assert done.cost_usd == pytest.approx((held + 120.0) / 3600 * T4_PRICE, abs=1e-6)


def test_the_submitted_job_is_a_fixed_command_on_the_cluster_with_nothing_from_the_spec_in_it(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    spec = ml_spec(
        code_dir, fields={"params": {"note": "$(rm -rf /); `reboot`"}}, max_runtime="30m"
    )
    job = azure.submit(spec).job

    [put] = puts(sim)
    props = sim.ml.created[0].props
    assert put.path.endswith(f"/workspaces/{WORKSPACE}/jobs/eph-{job.id}-0")
    assert f"/resourceGroups/{GROUP}/" in put.path
    assert props["jobType"] == "Command"
    assert props["command"] == COMMAND
    assert props["computeId"].endswith(f"/workspaces/{WORKSPACE}/computes/{CLUSTER}")
    runner = RunnerEnvironment.load()
    assert props["environmentId"].endswith(
        f"/environments/ephemerid-runner/versions/{runner.version}"
    )
    assert props["environmentVariables"] == {
        "EPHEMERID_ARTIFACTS": azure.artifacts.root_uri,
        "EPHEMERID_JOB": job.id,
    }
    assert props["tags"] == {TAG_JOB: job.id}
    assert props["experimentName"] == "ephemerid"
    assert props["resources"]["instanceCount"] == 1
    assert props.get("distribution") is None
    folder = f"azureml://datastores/ephemerid_runs/paths/{job.id}/"
    assert props["inputs"]["job"] == {"uri": folder, "mode": "Direct", "jobInputType": "uri_folder"}
    assert props["outputs"]["outputs"]["uri"] == f"{folder}outputs/"
    margin = azure.settings.provision_timeout_s + azure.settings.grace_s
    margin += azure.settings.heartbeat_timeout_s
    timeout = isodate.parse_duration(props["limits"]["timeout"])
    assert timeout.total_seconds() == int(1800 + margin)
    sent = json.dumps(props)
    assert "rm -rf" not in sent and "reboot" not in sent


def test_a_two_node_job_renders_a_pytorch_distribution_of_one_process_per_gpu(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    azure.submit(ml_spec(code_dir, nodes=2, gpus=4))

    props = sim.ml.created[0].props
    assert props["resources"]["instanceCount"] == 2
    assert props["distribution"] == {"distributionType": "PyTorch", "processCountPerInstance": 4}
    assert props["command"] == COMMAND


def test_every_rank_of_a_two_node_job_trains_and_logs_and_rank_zero_registers_the_model(
    azure: Service, sim: ArmSimulator, player: AmlPlayer
) -> None:
    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "code": str(DISTRIBUTED),
            "entrypoint": "train.py",
            "register_as": {"name": "ddp", "alias": "production"},
            "compute": {"nodes": 2, "gpus": 0},
        }
    )
    job = azure.submit(spec).job

    [done] = settle(azure, [job.id], timeout=90)

    assert done.state is JobState.SUCCEEDED, done.reason
    assert "rank 0 of 2 on cpu: 2048 samples" in log_of(azure, job.id)
    rank_1 = text_of(azure.artifacts, names.run_key(job.id, names.log_file(1)))
    assert "rank 1 of 2 on cpu: 2048 samples" in rank_1
    assert "(rank 1 of 2)" in rank_1
    assert "epoch 0" not in rank_1  # rank 0 reports
    model = f"runs/{job.id}/outputs/model"
    assert sorted(done.outputs) == [f"{model}/model.json", f"{model}/model.pt"]
    assert json.loads(text_of(azure.artifacts, f"{model}/model.json"))["world_size"] == 2
    assert done.metrics["accuracy"] > 0.9
    assert done.model_version == "ddp:1"
    assert done.price_per_hour == pytest.approx(2 * T4_PRICE)
    assert status(sim, done.handle["aml_job"]) == "Completed"


def test_the_distributed_example_trains_alone_on_local_compute(service: Service) -> None:
    spec = JobSpec.model_validate(
        {"kind": "train", "code": str(DISTRIBUTED), "entrypoint": "train.py"}
    )

    done = run(service, spec, timeout=90)

    assert done.state is JobState.SUCCEEDED, done.reason
    assert "rank 0 of 1 on cpu: 4096 samples" in log_of(service, done.id)
    assert done.metrics["accuracy"] > 0.9


def test_cancelling_a_running_job_cancels_its_azure_ml_job_and_stops_its_runner(
    azure: Service, sim: ArmSimulator, player: AmlPlayer, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = azure.submit(held_spec(code_dir, gate)).job
    pid = gate.pid()

    cancelled = azure.cancel(job.id)

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.compute_state is ComputeState.RELEASED
    assert status(sim, job.handle["aml_job"]) == "Canceled"
    assert [r.method for r in sim.requests].count("POST") == 1
    wait_gone([pid])


def test_a_job_whose_result_is_written_gets_time_to_complete_before_it_would_be_cancelled(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(env, EPHEMERID_AML_FINISH_WAIT_S="0.5") as azure:
        backend = azure.backends["azure-ml"]
        ending, stuck = record(ml_spec(code_dir), "ending"), record(ml_spec(code_dir), "stuck")
        handles = [backend.provision(ending), backend.provision(stuck)]
        for job, handle in zip((ending, stuck), handles, strict=True):
            started(sim, handle.data["aml_job"])
            put_bytes(azure.artifacts, names.run_key(job.id, names.RESULT_FILE), b"{}")
        finisher = threading.Timer(0.2, sim.ml.finish, (handles[0].data["aml_job"], True))
        finisher.start()

        confirmed = [backend.teardown(h) for h in handles]
        finisher.join()

    assert confirmed == [True, True]
    assert [status(sim, h.data["aml_job"]) for h in handles] == ["Completed", "Canceled"]
    cancels = [r.path for r in sim.requests if r.method == "POST"]
    assert [p.split("/")[-2] for p in cancels] == [handles[1].data["aml_job"]]


def test_a_retried_provision_finds_the_job_it_submitted_instead_of_submitting_another(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    backend = azure.backends["azure-ml"]
    job = record(ml_spec(code_dir))

    first = backend.provision(job)
    again = backend.provision(job)

    assert again == first
    assert len(sim.ml.created) == 1
    assert len(puts(sim)) == 1


@pytest.mark.usefixtures("connection_resets")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_submission_whose_answer_was_lost_is_not_submitted_twice(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    register(sim, RunnerEnvironment.load())  # an earlier provision registered it
    sim.fail_next("lost", method="PUT")  # the job is made, the connection reset before the answer

    job = azure.submit(ml_spec(code_dir)).job

    assert job.state is JobState.RUNNING
    assert len(puts(sim)) >= 2  # the SDK sent it again
    assert [j.name for j in sim.ml.created] == [job.handle["aml_job"]]


def beat(service: Service, job_id: str, at: datetime | None = None) -> None:
    """The job's runner heartbeats (at ``at``, now by default)."""
    body = json.dumps({"at": (at or utcnow()).isoformat()}).encode()
    put_bytes(service.artifacts, names.run_key(job_id, names.HEARTBEAT_FILE), body)


def test_poll_maps_azure_ml_statuses_to_starting_running_and_gone(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    sim.ml.queue_s, sim.ml.finalizing_s = 0.4, 0.4
    backend = azure.backends["azure-ml"]
    job = record(ml_spec(code_dir))
    handle = backend.provision(job)
    name = handle.data["aml_job"]

    queued = backend.poll(handle)
    started(sim, name)
    before_the_runner = backend.poll(handle)
    beat(azure, job.id)
    running = backend.poll(handle)
    sim.ml.finish(name, ok=False, message="node lost")
    finalizing = backend.poll(handle)
    wait_for(lambda: status(sim, name) == "Failed", f"Azure ML job {name} to fail")
    gone = backend.poll(handle)

    assert (queued, before_the_runner, running, finalizing, gone) == (
        ComputeStatus.STARTING,
        ComputeStatus.STARTING,
        ComputeStatus.RUNNING,
        ComputeStatus.RUNNING,
        ComputeStatus.GONE,
    )
    assert backend.poll(Handle("azure-ml", "train-000000000000", {"aml_job": "nope"})) is (
        ComputeStatus.GONE
    )


@pytest.mark.parametrize(
    ("status", "compute"),
    [
        ("NotStarted", ComputeStatus.STARTING),
        ("Queued", ComputeStatus.STARTING),
        ("Preparing", ComputeStatus.STARTING),
        ("Provisioning", ComputeStatus.STARTING),
        ("Starting", ComputeStatus.STARTING),
        ("Running", ComputeStatus.RUNNING),
        ("Finalizing", ComputeStatus.RUNNING),
        ("CancelRequested", ComputeStatus.RUNNING),
        ("NotResponding", ComputeStatus.RUNNING),
        ("Paused", ComputeStatus.RUNNING),
        ("Completed", ComputeStatus.GONE),
        ("Failed", ComputeStatus.GONE),
        ("Canceled", ComputeStatus.GONE),
    ],
)
def test_every_azure_ml_status_means_compute_starting_held_or_gone(
    status: str, compute: ComputeStatus
) -> None:
    assert status_of(status) is compute


@pytest.mark.parametrize("status", ["Running", "NotResponding"])
def test_a_running_job_whose_runner_has_not_beaten_yet_is_still_starting(status: str) -> None:
    assert status_of(status, runner_started=False) is ComputeStatus.STARTING
    assert status_of("Finalizing", runner_started=False) is ComputeStatus.RUNNING


def test_a_job_queued_while_the_cluster_is_full_is_not_failed_for_a_missing_heartbeat(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    sim.ml.workspace(GROUP, WORKSPACE, Cluster(CLUSTER, max_nodes=1))
    with ephemerid(env, EPHEMERID_HEARTBEAT_TIMEOUT_S="1") as azure:
        first = azure.submit(ml_spec(code_dir, fields={"idempotency_key": "first"})).job
        second = azure.submit(ml_spec(code_dir, fields={"idempotency_key": "second"})).job
        started(sim, first.handle["aml_job"])
        # the simulator moves a job on one step per look: wait, however slow this machine is
        queued = "the second job to queue behind the first"
        wait_for(lambda: status(sim, second.handle["aml_job"]) == "Queued", queued)
        later = utcnow() + timedelta(seconds=5)
        beat = json.dumps({"at": later.isoformat()}).encode()
        put_bytes(azure.artifacts, names.run_key(first.id, names.HEARTBEAT_FILE), beat)

        actions = reap(azure, later)

        assert status(sim, second.handle["aml_job"]) == "Queued"
        assert [azure.store.get(j.id).state for j in (first, second)] == [JobState.RUNNING] * 2
        assert actions == []
        reap(azure, later + timedelta(seconds=5))  # the first's heartbeat is now 5 s old
        assert azure.store.get(first.id).state is JobState.FAILED
        assert "lost heartbeat" in azure.store.get(first.id).reason


def test_the_reaper_cancels_a_tagged_azure_ml_job_that_no_job_owns(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    orphan = record(ml_spec(code_dir), key="crashed before it was recorded")
    handle = azure.backends["azure-ml"].provision(orphan)  # its job never reached the store

    actions = reap(azure)

    assert f"{orphan.id}: azure-ml compute with no job -> torn down" in actions
    assert status(sim, handle.data["aml_job"]) == "Canceled"
    assert azure.backends["azure-ml"].list_owned() == []


def test_an_azure_ml_job_that_fails_without_a_result_fails_the_job(
    azure: Service, sim: ArmSimulator, player: AmlPlayer, code_dir: Path
) -> None:
    job = azure.submit(ml_spec(code_dir, "import os\nos._exit(0)\n")).job
    started(sim, job.handle["aml_job"])
    sim.ml.finish(job.handle["aml_job"], ok=False, message="the node was lost")

    [done] = settle(azure, [job.id])

    assert done.state is JobState.FAILED
    assert "compute exited without writing a result" in done.reason


# -- what Azure ML does that a quick simulator would not ----------------------------------------


def test_a_cancel_does_not_wait_on_azure_mls_retry_after_and_the_reaper_confirms_the_release(
    azure: Service, sim: ArmSimulator, player: AmlPlayer, code_dir: Path, tmp_path: Path
) -> None:
    # the cancel's operation asks to be read again in an hour, and the cancel takes its time
    sim.ml.cancel_retry_after_s, sim.ml.cancel_s = 3600, 3600
    gate = Gate(tmp_path / "gate")
    job = azure.submit(held_spec(code_dir, gate)).job
    name = job.handle["aml_job"]
    pid = gate.pid()
    answered: dict[str, JobRecord] = {}

    caller = threading.Thread(target=lambda: answered.update(job=azure.cancel(job.id)))
    caller.start()
    caller.join(timeout=60)

    assert "job" in answered, "the cancel held its caller on Azure ML's long-running operation"
    assert answered["job"].state is JobState.CANCELLED
    assert answered["job"].compute_state is ComputeState.LIVE  # owed: not confirmed yet
    assert status(sim, name) == "CancelRequested"
    wait_gone([pid])
    sim.ml.end_cancels()
    [done] = settle(azure, [job.id])
    assert done.compute_state is ComputeState.RELEASED
    assert [r.method for r in sim.requests].count("POST") == 1  # one cancel, confirmed by reads


def test_a_job_whose_image_build_outlasts_the_heartbeat_timeout_is_not_failed_before_it_beats(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    sim.ml.preparing_s = 3600  # Azure ML builds the environment's image
    with ephemerid(env, EPHEMERID_HEARTBEAT_TIMEOUT_S="1") as azure:
        job = azure.submit(ml_spec(code_dir)).job
        name = job.handle["aml_job"]
        wait_for(lambda: status(sim, name) == "Preparing", f"Azure ML job {name} to prepare")
        later = utcnow() + timedelta(seconds=30)  # the build took 30 heartbeat timeouts
        assert reap(azure, later) == []
        sim.ml.preparing_s = 0.0
        started(sim, name)  # its container starts: the runner has not beaten yet

        assert reap(azure, later) == []
        assert azure.store.get(job.id).state is JobState.RUNNING
        beat(azure, job.id, later)
        assert reap(azure, later + timedelta(seconds=0.5)) == []
        [lost] = reap(azure, later + timedelta(seconds=5))  # now its runner went quiet
        assert "lost heartbeat" in lost
    assert sim.ml.created[0].history[:5] == [
        "NotStarted",
        "Starting",
        "Preparing",
        "Queued",
        "Running",
    ]


def test_a_job_azure_ml_stops_hearing_from_runs_on_while_its_runner_beats(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(env, EPHEMERID_HEARTBEAT_TIMEOUT_S="1") as azure:
        job = azure.submit(ml_spec(code_dir)).job
        name = job.handle["aml_job"]
        started(sim, name)
        now = utcnow()
        beat(azure, job.id, now)
        sim.ml.not_responding(name)
        assert status(sim, name) == "NotResponding"

        for seconds in (10, 20, 30):  # NotResponding for half a minute, the runner beating
            beat(azure, job.id, now + timedelta(seconds=seconds))
            assert reap(azure, now + timedelta(seconds=seconds + 0.5)) == []
        assert azure.store.get(job.id).state is JobState.RUNNING
        sim.ml.not_responding(name, lost=False)
        assert status(sim, name) == "Running"
        sim.ml.not_responding(name)
        [lost] = reap(azure, now + timedelta(seconds=40))  # and now the runner is quiet too

        assert "lost heartbeat: none for over 1s" in lost
        done = azure.store.get(job.id)
        assert done.state is JobState.FAILED and done.compute_state is ComputeState.RELEASED
        assert status(sim, name) == "Canceled"


def test_a_quota_failure_after_the_submission_waits_and_submits_again_instead_of_failing(
    env: dict[str, str], sim: ArmSimulator, player: AmlPlayer, code_dir: Path
) -> None:
    sim.ml.fail_for_quota(1)  # the PUT is accepted; then the cluster cannot get its nodes
    with ephemerid(env, EPHEMERID_CAPACITY_BACKOFF_S="0.2") as azure:
        job = azure.submit(ml_spec(code_dir)).job
        first = job.handle["aml_job"]
        wait_for(lambda: status(sim, first) == "Failed", f"Azure ML job {first} to fail")

        [done] = settle(azure, [job.id])

    assert done.state is JobState.SUCCEEDED, done.reason
    assert [j.name for j in sim.ml.created] == [first, f"{first}-q1"]
    assert player.played() == [f"{first}-q1"]
    assert [c["why"] for c in done.earlier_compute] == ["not placed"]
    assert done.handle["aml_job"] == f"{first}-q1"


def test_a_quota_that_never_comes_fails_the_job_after_the_wait_saying_what_to_do(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    sim.ml.fail_for_quota(None)
    settings = {"EPHEMERID_CAPACITY_BACKOFF_S": "0.2", "EPHEMERID_CAPACITY_MAX_WAIT_S": "1"}
    with ephemerid(env, **settings) as azure:
        job = azure.submit(ml_spec(code_dir, nodes=2)).job
        waits = []

        def note() -> None:
            waits.append(azure.store.get(job.id).state)

        [done] = settle_jobs(azure, [job.id], timeout=60, on_tick=lambda: (reap(azure), note()))

    assert JobState.WAITING_FOR_CAPACITY in waits
    assert done.state is JobState.FAILED
    assert (
        "no quota for 2 Standard_NC4as_T4_v3 node(s) on cluster 'gpu' after waiting" in done.reason
    )
    assert "EPHEMERID_CAPACITY_MAX_WAIT_S=1" in done.reason
    assert "vCPU quota is exhausted" in done.reason  # Azure ML's own reason
    assert len(sim.ml.created) >= 2


# -- refusals -------------------------------------------------------------------------------


def test_a_quota_refusal_fails_the_job_clearly_and_nothing_is_left_submitted(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    sim.ml.refuse_quota()

    job = azure.submit(ml_spec(code_dir, nodes=2)).job

    assert job.state is JobState.FAILED
    assert job.compute_state is ComputeState.RELEASED
    assert "no quota for 2 Standard_NC4as_T4_v3 node(s) on cluster 'gpu'" in job.reason
    assert "JobNodeCountExceedsCoreQuota" in job.reason
    assert "fewer compute.nodes" in job.reason
    assert sim.ml.created == []


def test_a_missing_cluster_fails_the_job_naming_the_cluster_and_the_setting(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(env, EPHEMERID_AML_CLUSTER="gpu-big") as azure:
        job = azure.submit(ml_spec(code_dir)).job

    assert job.state is JobState.FAILED
    assert "cluster 'gpu-big' is not in workspace 'mlw-test'" in job.reason
    assert "EPHEMERID_AML_CLUSTER" in job.reason


def test_a_missing_workspace_and_a_missing_role_fail_the_job_saying_what_to_fix(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    missing = submit_once({**env, "EPHEMERID_AML_WORKSPACE": "mlw-gone"}, ml_spec(code_dir))
    sim.ml.forbidden = True
    forbidden = submit_once(env, ml_spec(code_dir))

    assert missing.state is JobState.FAILED
    assert "workspace 'mlw-gone' (resource group 'eph-ml') was not found" in missing.reason
    assert forbidden.state is JobState.FAILED
    assert "AuthorizationFailed" in forbidden.reason
    assert "AzureML Data Scientist role" in forbidden.reason


def test_more_nodes_than_the_cluster_has_fails_the_job_with_azure_mls_reason(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    job = azure.submit(ml_spec(code_dir, nodes=5)).job

    assert job.state is JobState.FAILED
    assert "Requested 5 nodes but cluster 'gpu' has at most 4" in job.reason


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        ({"skus": ["Standard_NC24ads_A100_v4"]}, "runs Standard_NC4as_T4_v3 nodes only"),
        ({"spot": "only"}, "compute.spot: only: cluster 'gpu' has dedicated nodes"),
    ],
)
def test_a_job_asking_for_what_the_cluster_cannot_give_is_refused_at_submit(
    azure: Service, sim: ArmSimulator, code_dir: Path, compute: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        azure.submit(ml_spec(code_dir, **compute))

    assert azure.store.list() == []
    assert puts(sim) == []


def test_spot_prefer_and_the_clusters_own_sku_run_on_the_cluster(
    azure: Service, sim: ArmSimulator, code_dir: Path
) -> None:
    spec = ml_spec(code_dir, spot="prefer", skus=["Standard_NC4as_T4_v3"])

    assert azure.submit(spec).job.state is JobState.RUNNING
    assert len(sim.ml.created) == 1


def test_a_multi_node_job_is_refused_before_anything_is_rented_on_a_one_machine_backend(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(env) as azure, pytest.raises(SpecError, match=r"compute\.nodes: 2 nodes need"):
        azure.submit(ml_spec(code_dir, nodes=2, backend="local"))

    assert puts(sim) == []
    assert azure.store.list() == []


# -- settings -------------------------------------------------------------------------------


def test_azure_ml_is_configured_only_when_its_settings_are_and_never_half(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert Settings.from_env({"EPHEMERID_HOME": str(tmp_path)}).azure_ml is None
    configured = Settings.from_env({**env, "EPHEMERID_AML_IDLE_S": "300"}).azure_ml
    assert configured is not None and configured.idle_s == 300.0
    assert configured.environment == ""  # ephemerid's own runner environment
    assert Settings.from_env({**env, "EPHEMERID_AML_ENVIRONMENT": ENVIRONMENT}).azure_ml
    half = {k: v for k, v in env.items() if k != "EPHEMERID_AML_CLUSTER"}
    with pytest.raises(BadInput, match="half configured: set EPHEMERID_AML_CLUSTER"):
        Settings.from_env(half)
    with pytest.raises(BadInput, match="EPHEMERID_AML_LOW_PRIORITY='maybe' is not true or false"):
        Settings.from_env({**env, "EPHEMERID_AML_LOW_PRIORITY": "maybe"})
    for environment in ("ephemerid-runner", "azureml:ephemerid-runner", "a b:1"):
        with pytest.raises(BadInput, match="names no environment: write azureml:name:version"):
            Settings.from_env({**env, "EPHEMERID_AML_ENVIRONMENT": environment})
    for setting, value, message in (
        ("EPHEMERID_AML_IDLE_S", "-120", "EPHEMERID_AML_IDLE_S='-120' must be seconds, 0 or more"),
        ("EPHEMERID_AML_FINISH_WAIT_S", "nan", "must be seconds, 0 or more"),
        ("EPHEMERID_AML_IDLE_S", "two minutes", "EPHEMERID_AML_IDLE_S='two minutes' is not a"),
        ("EPHEMERID_AML_DATASTORE", "runs/../models", "is not an Azure ML name"),
        ("EPHEMERID_AML_EXPERIMENT", "my experiment", "is not an Azure ML name"),
    ):
        with pytest.raises(BadInput, match=re.escape(message)):
            Settings.from_env({**env, setting: value})
    for environment in ("ephemerid-runner@latest", "runner:3"):
        ok = Settings.from_env({**env, "EPHEMERID_AML_ENVIRONMENT": environment}).azure_ml
        assert ok is not None and ok.environment == environment


def test_a_low_priority_cluster_is_billed_at_the_spot_price(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    with ephemerid(env, EPHEMERID_AML_LOW_PRIORITY="true") as azure:
        job = azure.submit(ml_spec(code_dir)).job

    assert (job.spot, job.price_per_hour) == (True, pytest.approx(0.0526))


def test_an_azure_bucket_reaches_the_runner_as_an_endpoint_and_identity_never_a_key(
    sim: ArmSimulator, tmp_path: Path, azurite_connection: str
) -> None:
    from ephemerid.compute.azure_ml import AzureMlCompute, connect

    client_id = "7d6f8a52-0000-4000-8000-00000000c1d0"
    env = aml_env(
        tmp_path,
        sim,
        EPHEMERID_AML_IDENTITY_CLIENT_ID=client_id,
        EPHEMERID_STORAGE=azurite_connection,
        EPHEMERID_STORAGE__accountName="ephstore",
    )
    settings = Settings.from_env(env)
    bucket = open_artifacts("az://", env)
    backend = AzureMlCompute.from_settings(settings, bucket)
    job = record(
        JobSpec.model_validate({"kind": "train", "code": "az://runs/c", "entrypoint": "t.py"})
    )

    handle = backend.provision(job)

    props = sim.ml.created[0].props
    assert props["environmentVariables"] == {
        "EPHEMERID_ARTIFACTS": "az://",
        "EPHEMERID_JOB": job.id,
        "EPHEMERID_STORAGE__blobServiceUri": "https://ephstore.blob.core.windows.net",
        "EPHEMERID_STORAGE__credential": "managedidentity",
        "EPHEMERID_STORAGE__clientId": client_id,
    }
    assert props["identity"] == {"identityType": "Managed", "clientId": client_id}
    account_key = azurite_connection.split("AccountKey=")[1].split(";")[0]
    assert account_key not in json.dumps(sim.ml.created[0].body)
    assert backend.teardown(handle) is True
    assert settings.azure_ml is not None
    no_endpoint = settings.azure_ml.model_copy(update={"blob_service_uri": ""})
    with pytest.raises(BadInput, match="EPHEMERID_STORAGE__accountName"):
        AzureMlCompute(lambda: connect(no_endpoint), no_endpoint, bucket)


def test_a_service_with_azure_ml_imports_it_only_when_a_job_needs_it_and_keeps_its_chatter_out(
    env: dict[str, str], code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    probe = (
        "import logging, sys\n"
        "from ephemerid.app import build_service\n"
        "from ephemerid.compute import Handle\n"
        "from ephemerid.settings import Settings\n"
        "from ephemerid.spec import JobSpec\n"
        "logging.getLogger('ephemerid').warning('ours')\n"
        "service = build_service(Settings.from_env())\n"
        "print('azure.ai.ml' in sys.modules)\n"
        "backend = service.backends['azure-ml']\n"
        "print(backend.poll(Handle('azure-ml', 'train-000000000000', {'aml_job': 'none'})).value)\n"
        f"spec = {{'kind': 'train', 'code': {str(code_dir)!r}, 'entrypoint': 'job.py'}}\n"
        "print(service.submit(JobSpec.model_validate(spec)).job.state.value)\n"
        "print('azure.ai.ml' in sys.modules)\n"
        "service.cancel(service.store.list()[0].id)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "gone", "RUNNING", "True"]
    # with no logging set up, Python prints warnings and errors to stderr: only ephemerid's here,
    # none of the SDK's import-time "experimental class" warnings or per-call activity errors
    assert done.stderr.splitlines() == ["ours"]

"""LocalCompute on its own: runner subprocesses, sessions, slots and GPUs, with no service."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drive import Gate, alive, held_spec, session_of, spec_for, wait_for, wait_gone, write_script
from ephemerid import names
from ephemerid.artifacts import ArtifactStore, get_bytes, open_artifacts, put_bytes
from ephemerid.compute import ComputeStatus, Handle
from ephemerid.compute.local import LocalCompute
from ephemerid.contract import Launch, LaunchEnvironment
from ephemerid.errors import CapacityUnavailable, SpecError
from ephemerid.record import JobRecord
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from wheels import make_wheel

GRANDCHILD_SCRIPT = """
import json, os, pathlib, subprocess

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
sleeper = subprocess.Popen(["sleep", "300"])
pids = pathlib.Path(params["gate"]) / "pids.json"
pids.with_suffix(".tmp").write_text(json.dumps({"script": os.getpid(), "sleep": sleeper.pid}))
os.replace(pids.with_suffix(".tmp"), pids)
sleeper.wait()
"""

ENV_SCRIPT = """
import json, os, pathlib, time

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "env.json").write_text(json.dumps(dict(os.environ)))
gate = pathlib.Path(params["gate"])
(gate / os.environ["EPHEMERID_JOB_ID"]).touch()
deadline = time.monotonic() + 60
while not (gate / "open").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return open_artifacts(f"file://{tmp_path / 'bucket'}")


Make = Callable[..., LocalCompute]


@pytest.fixture
def make(tmp_path: Path, artifacts: ArtifactStore) -> Iterator[Make]:
    """``make(**options)`` builds a LocalCompute on one shared folder; all it owns ends after."""
    made: list[LocalCompute] = []

    def make_compute(**options: Any) -> LocalCompute:
        options = {"gpus": [], "grace_s": 1.0, **options}
        made.append(LocalCompute(tmp_path / "compute", artifacts.root_uri, **options))
        return made[-1]

    yield make_compute
    for compute in made:
        for handle in compute.list_owned():
            compute.teardown(handle)


def stage(
    artifacts: ArtifactStore,
    job_id: str,
    code_dir: Path,
    spec: JobSpec,
    environment: LaunchEnvironment | None = None,
) -> JobRecord:
    """Put the job's code and launch file where the runner looks for them, as submit does."""
    code = names.run_key(job_id, names.CODE_DIR)
    for path in code_dir.iterdir():
        put_bytes(artifacts, f"{code}/{path.name}", path.read_bytes())
    launch = Launch(
        job_id=job_id,
        entrypoint=spec.entrypoint,
        args=spec.args,
        params=spec.params,
        max_runtime_s=spec.compute.max_runtime,
        code=code,
        inputs={},
        model=None,
        heartbeat_s=0.5,
        grace_s=1.0,
        log_limit_bytes=1024 * 1024,
        environment=environment,
    )
    put_bytes(artifacts, names.run_key(job_id, names.JOB_FILE), launch.dumps())
    return JobRecord(id=job_id, key=f"test:{job_id}", spec=spec, source="test", backend="local")


def provisioned(compute: LocalCompute, job: JobRecord) -> Handle | None:
    """The handle, or None while no slot is free (the kernel frees a dead runner's soon after)."""
    try:
        return compute.provision(job)
    except CapacityUnavailable:
        return None


def held_job(
    artifacts: ArtifactStore, job_id: str, code_dir: Path, gate: Gate, **fields: Any
) -> JobRecord:
    return stage(artifacts, job_id, code_dir, held_spec(code_dir, gate, **fields))


def test_provision_starts_the_runner_in_a_session_of_its_own(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make()
    gate = Gate(tmp_path / "gate")

    handle = compute.provision(held_job(artifacts, "train-own-session", code_dir, gate))

    runner = handle.data["pid"]
    assert handle.job_id == "train-own-session"
    assert os.getsid(runner) == runner
    assert os.getsid(runner) != os.getsid(0)
    assert os.getsid(gate.pid()) == runner, "the user's script runs in the runner's session"
    assert compute.poll(handle) is ComputeStatus.RUNNING


def test_teardown_ends_the_whole_tree_including_a_grandchild(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make()
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, GRANDCHILD_SCRIPT)
    job = stage(artifacts, "train-grandchild", code_dir, spec_for(code_dir, params=gate.params))
    handle = compute.provision(job)
    pidfile = gate.path / "pids.json"
    pids = json.loads(wait_for(lambda: pidfile.exists() and pidfile.read_text(), "pids.json"))
    tree = [handle.data["pid"], pids["script"], pids["sleep"]]
    assert all(alive(pid) for pid in tree)

    assert compute.teardown(handle) is True

    assert not [pid for pid in tree if alive(pid)]
    assert session_of(handle.data["pid"]) == []
    assert compute.poll(handle) is ComputeStatus.GONE


def test_teardown_is_idempotent(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make()
    gate = Gate(tmp_path / "gate")
    handle = compute.provision(held_job(artifacts, "train-twice", code_dir, gate))
    gate.pid()

    assert compute.teardown(handle) is True
    assert compute.teardown(handle) is True
    assert compute.list_owned() == []


def test_teardown_of_a_runner_that_already_exited_confirms_at_once(
    make: Make, artifacts: ArtifactStore, code_dir: Path
) -> None:
    compute = make()
    write_script(code_dir, "print('quick')\n")
    job = stage(artifacts, "train-quick", code_dir, spec_for(code_dir))
    handle = compute.provision(job)
    wait_for(lambda: artifacts.stat(names.run_key(job.id, names.RESULT_FILE)), "the result")
    wait_gone([handle.data["pid"]])

    assert compute.teardown(handle) is True
    assert compute.list_owned() == []


def test_list_owned_finds_a_provisioned_job_until_it_is_torn_down(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make()
    gate = Gate(tmp_path / "gate")
    handle = compute.provision(held_job(artifacts, "train-owned", code_dir, gate))

    assert compute.list_owned() == [handle]
    assert make().list_owned() == [handle], "another instance on the same folder finds it too"

    compute.teardown(handle)
    assert compute.list_owned() == []


def test_provision_beyond_the_slots_raises_capacity_unavailable(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make(slots=1)
    first = compute.provision(held_job(artifacts, "train-first", code_dir, Gate(tmp_path / "a")))
    second = held_job(artifacts, "train-second", code_dir, Gate(tmp_path / "b"))

    with pytest.raises(CapacityUnavailable, match="all 1 slots are busy"):
        compute.provision(second)
    with pytest.raises(CapacityUnavailable):
        make(slots=1).provision(second)  # the lock is shared by every instance on the folder

    assert compute.list_owned() == [first]


def test_a_slot_is_free_again_once_its_runner_is_sigkilled(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make(slots=1)
    first_gate = Gate(tmp_path / "a")
    first = compute.provision(held_job(artifacts, "train-killed", code_dir, first_gate))
    first_gate.pid()
    second = held_job(artifacts, "train-next", code_dir, Gate(tmp_path / "b"))
    with pytest.raises(CapacityUnavailable):
        compute.provision(second)

    os.kill(first.data["pid"], signal.SIGKILL)  # no cleanup runs: only the kernel frees the lock
    wait_gone([first.data["pid"]])

    handle = wait_for(lambda: provisioned(compute, second), "the dead runner's slot", timeout=10)
    assert handle.data["slot"] == 0
    assert compute.poll(handle) is ComputeStatus.RUNNING
    assert compute.poll(first) is ComputeStatus.GONE


def test_provision_twice_for_a_running_job_returns_the_same_handle(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make(slots=1)
    gate = Gate(tmp_path / "gate")
    job = held_job(artifacts, "train-retried", code_dir, gate)
    handle = compute.provision(job)
    gate.pid()

    again = compute.provision(job)
    from_elsewhere = make(slots=1).provision(job)

    assert again == handle
    assert from_elsewhere == handle
    assert sorted(session_of(handle.data["pid"])) == sorted([handle.data["pid"], gate.pid()])
    assert gate.starts() == 1


def _env_seen(artifacts: ArtifactStore, job_id: str) -> dict[str, str]:
    key = f"{names.run_key(job_id, names.OUTPUTS_DIR)}/env.json"
    wait_for(lambda: artifacts.stat(names.run_key(job_id, names.RESULT_FILE)), f"{job_id} result")
    return json.loads(get_bytes(artifacts, key))


def test_jobs_asking_for_a_gpu_each_see_one_gpu_of_their_own(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make(gpus=["0", "1"])
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, ENV_SCRIPT)
    spec = spec_for(code_dir, params=gate.params, compute={"gpus": 1})
    jobs = [stage(artifacts, f"train-gpu{n}", code_dir, spec) for n in range(2)]
    handles = [compute.provision(job) for job in jobs]
    for job in jobs:  # both run at once before either may finish
        wait_for((gate.path / job.id).exists, f"{job.id} to start")
    with pytest.raises(CapacityUnavailable):  # one slot per GPU
        compute.provision(stage(artifacts, "train-gpu2", code_dir, spec))
    gate.open()

    seen = [_env_seen(artifacts, job.id)["CUDA_VISIBLE_DEVICES"] for job in jobs]

    assert sorted(seen) == ["0", "1"]
    assert [h.data["gpu"] for h in handles] == seen


def test_a_job_asking_for_no_gpu_sees_none_even_when_gpus_are_free(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make(gpus=["0", "1"])
    gate = Gate(tmp_path / "gate")
    gate.open()
    write_script(code_dir, ENV_SCRIPT)
    job = stage(artifacts, "train-cpu", code_dir, spec_for(code_dir, params=gate.params))

    handle = compute.provision(job)

    assert _env_seen(artifacts, job.id)["CUDA_VISIBLE_DEVICES"] == ""
    assert handle.data["gpu"] == ""


# -- environments ----------------------------------------------------------------------------


def test_a_jobs_environment_is_built_in_the_envs_folder_and_runs_its_code(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    wheel = make_wheel(code_dir, "ephlocalpkg", "1.0", "VALUE = 5\n")
    write_script(code_dir, "import sys, ephlocalpkg; print('python', sys.executable)\n")
    environment = LaunchEnvironment(id="c" * 16, packages=[f"./{wheel.name}"])
    job = stage(artifacts, "train-env", code_dir, spec_for(code_dir), environment)

    make().provision(job)

    wait_for(lambda: artifacts.stat(names.run_key(job.id, names.RESULT_FILE)), "the result", 60)
    done = json.loads(get_bytes(artifacts, names.run_key(job.id, names.RESULT_FILE)))
    assert done["status"] == "succeeded", done["reason"]
    assert done["setup_s"] is not None
    python = tmp_path / "envs" / environment.id / "bin" / "python"
    log = get_bytes(artifacts, names.run_key(job.id, names.log_file(0))).decode()
    assert f"python {python}" in log


def test_an_image_is_refused_at_submit_where_docker_is_not_on_path(
    make: Make, code_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    spec = spec_for(code_dir, environment={"image": "myregistry.azurecr.io/train:1.4"})

    with pytest.raises(SpecError, match=r"environment.image: local compute runs no containers"):
        make().check(spec)


def test_an_image_is_taken_where_docker_is_on_path(
    make: Make, code_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))

    make().check(spec_for(code_dir, environment={"image": "myregistry.azurecr.io/train:1.4"}))


def test_a_python_version_this_machine_lacks_is_refused_at_submit(
    make: Make, code_dir: Path
) -> None:
    spec = spec_for(code_dir, environment={"pip": ["x"], "python": "3.99"})

    with pytest.raises(SpecError, match=r"environment.python: Python 3.99 is not on this machine"):
        make().check(spec)


def test_more_gpus_than_local_compute_has_are_refused_with_the_count_it_found(
    make: Make, code_dir: Path
) -> None:
    compute = make(gpus=["0"])

    with pytest.raises(SpecError) as refused:
        compute.check(spec_for(code_dir, compute={"gpus": 2}))

    assert "compute.gpus: 2 GPU(s) asked, but local compute found 1" in str(refused.value)
    assert "compute.cpu_fallback: true" in str(refused.value)
    compute.check(spec_for(code_dir, compute={"gpus": 1}))  # what it has is fine


def test_the_gpu_count_comes_from_the_setting_before_cuda_visible_devices(
    tmp_path: Path, artifacts: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    home = {"home": tmp_path / "home"}
    counted = LocalCompute.from_settings(Settings.from_env({}, **home, local_gpus=2), artifacts)
    visible = LocalCompute.from_settings(Settings.from_env({}, **home), artifacts)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    hidden = LocalCompute.from_settings(Settings.from_env({}, **home), artifacts)

    assert (counted.gpus, counted.gpus_found_by) == (["0", "1"], "EPHEMERID_LOCAL_GPUS")
    assert (visible.gpus, visible.gpus_found_by) == (["3", "5"], "CUDA_VISIBLE_DEVICES")
    assert hidden.gpus == []


def test_with_cpu_fallback_a_gpu_job_runs_on_the_cpu_and_its_handle_says_so(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make(gpus=[])
    gate = Gate(tmp_path / "gate")
    gate.open()
    write_script(code_dir, ENV_SCRIPT)
    spec = spec_for(code_dir, params=gate.params, compute={"gpus": 2, "cpu_fallback": True})
    compute.check(spec)

    handle = compute.provision(stage(artifacts, "train-fallback", code_dir, spec))

    assert _env_seen(artifacts, "train-fallback")["CUDA_VISIBLE_DEVICES"] == ""
    assert handle.data["cpu_fallback"] is True
    assert handle.sku == "cpu (fallback: 2 GPU(s) asked, 0 found)"


def test_a_gpu_job_waits_for_a_gpu_slot_rather_than_run_on_a_slot_without_one(
    make: Make, artifacts: ArtifactStore, code_dir: Path, tmp_path: Path
) -> None:
    compute = make(gpus=["0"], slots=3)
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, ENV_SCRIPT)
    spec = spec_for(code_dir, params=gate.params, compute={"gpus": 1})
    first = stage(artifacts, "train-gpu-a", code_dir, spec)
    compute.provision(first)
    wait_for((gate.path / first.id).exists, f"{first.id} to start")

    with pytest.raises(CapacityUnavailable, match="all 1 GPU slots are busy"):
        compute.provision(stage(artifacts, "train-gpu-b", code_dir, spec))
    cpu_job = stage(artifacts, "train-cpu-c", code_dir, spec_for(code_dir, params=gate.params))
    assert compute.provision(cpu_job).data["gpu"] == ""  # a CPU job still takes a free slot
    gate.open()

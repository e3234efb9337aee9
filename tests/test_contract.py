"""The runner contract: job.json and result.json, their reader and writer, and their versions."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drive import finish, log_of, spec_for, write_script
from ephemerid import names
from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.contract import (
    CONTRACT_VERSION,
    ENVIRONMENT_CONTRACT,
    Launch,
    LaunchEnvironment,
    Result,
    RunStatus,
)
from ephemerid.errors import ContractError
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service

JOB = "train-0123456789ab"
LAUNCH_KEY = names.run_key(JOB, names.JOB_FILE)
RESULT_KEY = names.run_key(JOB, names.RESULT_FILE)
STARTED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def launch_for(job_id: str = JOB, **fields: Any) -> Launch:
    values: dict[str, Any] = {
        "job_id": job_id,
        "entrypoint": "job.py",
        "args": ["--epochs", "3"],
        "params": {"lr": 0.1, "layers": [64, 32]},
        "max_runtime_s": 60.0,
        "code": names.run_key(job_id, names.CODE_DIR),
        "inputs": {"train": "incoming/train/day1.csv"},
        "model": None,
        "heartbeat_s": 0.5,
        "grace_s": 1.0,
        "log_limit_bytes": 1024 * 1024,
    }
    return Launch(**{**values, **fields})


def finished_result(**fields: Any) -> Result:
    values: dict[str, Any] = {
        "job_id": JOB,
        "status": RunStatus.SUCCEEDED,
        "exit_code": 0,
        "started_at": STARTED,
        "finished_at": STARTED + timedelta(seconds=42),
        "outputs": [f"{names.run_key(JOB, names.OUTPUTS_DIR)}/report.txt"],
        "metrics": {"loss": 0.25},
    }
    return Result(**{**values, **fields})


def document(model: Launch | Result, **changes: Any) -> bytes:
    """The model's JSON with fields changed, added, or (with a value of None) removed."""
    data = json.loads(model.dumps())
    for name, value in changes.items():
        if value is None:
            del data[name]
        else:
            data[name] = value
    return json.dumps(data).encode()


# -- reading back what was written --------------------------------------------------------------


def test_a_launch_reads_back_as_it_was_written_with_its_contract_version() -> None:
    launch = launch_for(model="models/churn/3/files")

    data = launch.dumps()

    assert json.loads(data)["contract"] == CONTRACT_VERSION == 1
    assert Launch.loads(data) == launch


def test_a_result_reads_back_as_it_was_written_with_its_times_and_status() -> None:
    result = finished_result(status=RunStatus.TIMED_OUT, reason="too long", exit_code=-9)

    again = Result.loads(result.dumps())

    assert again == result
    assert again.status is RunStatus.TIMED_OUT
    assert again.finished_at is not None and again.started_at is not None
    assert again.finished_at - again.started_at == timedelta(seconds=42)
    assert json.loads(result.dumps())["status"] == "timed_out"


def test_unknown_fields_of_the_same_contract_version_are_ignored() -> None:
    """A later release may add an optional field without a new version: older readers go on."""
    launch, result = launch_for(), finished_result()

    newer_launch = document(launch, image="ghcr.io/acme/train:2", spec={"kind": "train"})
    newer_result = document(result, gpu_seconds=12.5)

    assert Launch.loads(newer_launch) == launch
    assert Result.loads(newer_result) == result


# -- refusing what cannot be read ---------------------------------------------------------------


@pytest.mark.parametrize("field", ["job_id", "entrypoint", "max_runtime_s", "code", "inputs"])
def test_a_launch_missing_a_required_field_is_refused_naming_it(field: str) -> None:
    with pytest.raises(ContractError) as refused:
        Launch.loads(document(launch_for(), **{field: None}), where=LAUNCH_KEY)

    assert f"required field '{field}' is missing" in str(refused.value)
    assert LAUNCH_KEY in str(refused.value)


def test_a_result_missing_its_status_or_with_an_unknown_one_is_refused_naming_the_field() -> None:
    with pytest.raises(ContractError, match="required field 'status' is missing"):
        Result.loads(document(finished_result(), status=None))
    with pytest.raises(ContractError, match="field 'status'"):
        Result.loads(document(finished_result(), status="exploded"))
    with pytest.raises(ContractError, match="field 'started_at'"):
        Result.loads(document(finished_result(), started_at="2025-01-02T03:04:05"))  # no zone


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{half a docu", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (b"[1, 2]", "must be a JSON object, not list"),
        (json.dumps({"job_id": JOB}).encode(), "has no runner contract version"),
        (json.dumps({"contract": "1", "job_id": JOB}).encode(), "has no runner contract version"),
        (json.dumps({"contract": True, "job_id": JOB}).encode(), "has no runner contract version"),
    ],
)
def test_a_document_that_is_no_launch_is_refused_naming_the_file(data: bytes, says: str) -> None:
    with pytest.raises(ContractError, match=says) as refused:
        Launch.loads(data, where=LAUNCH_KEY)

    assert LAUNCH_KEY in str(refused.value)


@pytest.mark.parametrize("version", [0, 2])
def test_a_document_of_another_contract_version_is_refused_naming_both(version: int) -> None:
    with pytest.raises(ContractError) as refused:
        Result.loads(document(finished_result(), contract=version), where=RESULT_KEY)

    message = str(refused.value)
    assert f"{RESULT_KEY} speaks runner contract {version}" in message
    assert f"speaks contract {CONTRACT_VERSION}" in message
    assert "same ephemerid release on the service and on the compute" in message


# -- the runner -----------------------------------------------------------------------------------


def stage_code(store: ArtifactStore, job_id: str, code_dir: Path) -> None:
    for path in code_dir.iterdir():
        put_bytes(store, f"{names.run_key(job_id, names.CODE_DIR)}/{path.name}", path.read_bytes())


def test_a_runner_refuses_a_launch_of_a_newer_contract_with_a_failed_result_naming_both_versions(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "print('the entrypoint ran')\n")
    stage_code(service.artifacts, JOB, code_dir)
    newer = launch_for(contract=4)
    put_bytes(service.artifacts, LAUNCH_KEY, newer.dumps())

    done = subprocess.run(
        [
            *(sys.executable, "-m", "ephemerid.runner", "--artifacts", service.artifacts.root_uri),
            *("--job", JOB, "--work-dir", str(tmp_path / "work")),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stderr
    result = Result.loads(get_bytes(service.artifacts, RESULT_KEY))
    assert result.status is RunStatus.FAILED
    assert f"{LAUNCH_KEY} speaks runner contract 4" in result.reason
    assert "speaks contract 1" in result.reason
    assert result.exit_code is None and result.started_at is None
    assert result.finished_at is not None
    log = log_of(service, JOB)
    assert "speaks runner contract 4" in log
    assert "the entrypoint ran" not in log


def test_a_job_whose_launch_the_runner_refuses_fails_with_that_reason_instead_of_hanging(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('the entrypoint ran')\n")
    stage_code(service.artifacts, JOB, code_dir)
    spec = spec_for(code_dir)
    service.store.create_if_absent(JobRecord(JOB, "test:newer", spec, "test", backend="local"))
    put_bytes(service.artifacts, LAUNCH_KEY, launch_for(contract=4).dumps())

    service.start(JOB)
    job = finish(service, JOB)

    assert job.state is JobState.FAILED
    assert "speaks runner contract 4" in job.reason and "speaks contract 1" in job.reason
    assert "the entrypoint ran" not in log_of(service, JOB)


def test_the_runner_imports_nothing_of_the_service() -> None:
    """The compute installs ephemerid only to run this: it must start fast and need little."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, ephemerid.runner; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    loaded = set(done.stdout.split())
    assert "ephemerid.contract" in loaded, done.stderr
    heavy = {"ephemerid.service", "ephemerid.spec", "ephemerid.store", "ephemerid.settings", "yaml"}
    assert heavy.isdisjoint(loaded)
    assert not any(name == "azure" or name.startswith("azure.") for name in loaded)


# -- the service ----------------------------------------------------------------------------------


def accepted_job(service: Service, code_dir: Path) -> JobRecord:
    """A job the store knows, as a runner's result would find it (no compute to give back)."""
    write_script(code_dir, "print('ok')\n")
    record = JobRecord(JOB, "test:typed", spec_for(code_dir), "test", backend="local")
    job, created = service.store.create_if_absent(record)
    assert created
    return job


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (RunStatus.SUCCEEDED, JobState.SUCCEEDED),
        (RunStatus.FAILED, JobState.FAILED),
        (RunStatus.TIMED_OUT, JobState.TIMED_OUT),
    ],
)
def test_the_service_completes_a_job_from_a_typed_result(
    service: Service, code_dir: Path, status: RunStatus, state: JobState
) -> None:
    accepted_job(service, code_dir)
    result = finished_result(status=status, reason=f"the run {status.value}")
    put_bytes(service.artifacts, RESULT_KEY, result.dumps())

    job = service.complete(JOB)

    assert job.state is state
    assert job.reason == f"the run {status.value}"
    assert job.exit_code == 0
    assert job.started_at == STARTED
    assert job.finished_at == STARTED + timedelta(seconds=42)
    assert job.metrics == {"loss": 0.25}
    assert job.outputs == result.outputs
    assert service.store.get(JOB) == job


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"status": "succ', f"{RESULT_KEY} is not JSON"),
        (document(finished_result(), contract=2), f"{RESULT_KEY} speaks runner contract 2"),
        (document(finished_result(), status=None), "required field 'status' is missing"),
    ],
)
def test_a_result_the_service_cannot_read_fails_the_job_naming_the_file(
    service: Service, code_dir: Path, data: bytes, says: str
) -> None:
    accepted_job(service, code_dir)
    put_bytes(service.artifacts, RESULT_KEY, data)

    job = service.complete(JOB)
    again = service.complete(JOB)  # a redelivery, or the reaper finding the result

    assert job.state is JobState.FAILED
    assert says in job.reason
    assert RESULT_KEY in job.reason
    assert again == job


def test_a_launch_with_an_environment_is_contract_2_so_an_older_runner_refuses_it() -> None:
    environment = LaunchEnvironment(id="a" * 16, packages=["scikit-learn==1.5.2"])
    plain, with_env = launch_for(), launch_for(environment=environment)

    assert json.loads(plain.dumps())["contract"] == CONTRACT_VERSION == 1
    assert json.loads(with_env.dumps())["contract"] == ENVIRONMENT_CONTRACT == 2
    assert Launch.loads(with_env.dumps()) == with_env  # this runner reads both
    assert Launch.loads(plain.dumps()) == plain
    with pytest.raises(ContractError, match="speaks contract 1 and 2 and 3"):
        Launch.loads(document(plain, contract=4))

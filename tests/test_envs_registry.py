"""An ``environment.image`` on a job VM: pulled with the VM's identity, run as an argument list.

A real HTTP server on loopback plays the VM's instance metadata service (the identity's token)
and the registry (its ``/oauth2/exchange``); a ``docker`` program on PATH records each call it
gets (its arguments and standard input) and, for ``run``, runs the command after the image as
the container would, so the job's code really runs. The runner is the real one.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drive import write_script
from ephemerid import names
from ephemerid.artifacts import ArtifactStore, get_bytes, open_artifacts, put_bytes
from ephemerid.contract import Launch, LaunchEnvironment, RunStatus
from ephemerid.envs.registry import NULL_USER, registry_of
from ephemerid.runner import Runner
from registries import AAD_TOKEN, CLIENT_ID, REFRESH_TOKEN, Azure, docker_on_path, serve


@pytest.fixture
def azure() -> Iterator[type[Azure]]:
    with serve() as handler:
        yield handler


@pytest.fixture
def vm(azure: type[Azure], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A VM told its registry and identity, with docker on PATH: (the image, docker's log)."""
    registry = f"127.0.0.1:{azure.port}"  # type: ignore[attr-defined]
    image = f"{registry}/train:1.4"
    bin_dir, log = tmp_path / "bin", tmp_path / "docker.jsonl"
    docker_on_path(bin_dir, log, image)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("EPHEMERID_VM_REGISTRY", registry)
    monkeypatch.setenv("EPHEMERID_IMDS", f"http://{registry}")
    monkeypatch.setenv("EPHEMERID_VM_IDENTITY_CLIENT_ID", CLIENT_ID)
    return image, log


def stage(artifacts: ArtifactStore, job_id: str, code_dir: Path, image: str) -> None:
    code = names.run_key(job_id, names.CODE_DIR)
    for path in code_dir.iterdir():
        put_bytes(artifacts, f"{code}/{path.name}", path.read_bytes())
    launch = Launch(
        job_id=job_id,
        entrypoint="job.py",
        args=["--epochs", "3; reboot"],
        params={},
        max_runtime_s=120,
        code=code,
        inputs={},
        model=None,
        heartbeat_s=0.5,
        environment=LaunchEnvironment(id="d" * 16, image=image),
    )
    put_bytes(artifacts, names.run_key(job_id, names.JOB_FILE), launch.dumps())


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_an_image_is_pulled_with_the_vm_identity_and_its_token_goes_only_to_docker_stdin(
    azure: type[Azure], vm: tuple[str, Path], tmp_path: Path, code_dir: Path
) -> None:
    image, docker_log = vm
    artifacts = open_artifacts(f"file://{tmp_path / 'bucket'}")
    write_script(code_dir, "import sys; print('ran in the image with', sys.argv[1:])\n")
    stage(artifacts, "train-0123456789ab", code_dir, image)

    result = Runner(artifacts, "train-0123456789ab", tmp_path / "work").run()

    assert result.status is RunStatus.SUCCEEDED, result.reason
    assert result.setup_s is not None
    imds, exchange = azure.seen
    assert imds["path"] == "/metadata/identity/oauth2/token" and imds["metadata"] == "true"
    assert imds["query"]["client_id"] == CLIENT_ID
    assert imds["query"]["resource"] == "https://management.azure.com/"
    assert exchange["path"] == "/oauth2/exchange"
    assert exchange["form"] == {
        "grant_type": "access_token",
        "service": "127.0.0.1",
        "access_token": AAD_TOKEN,
    }
    login, pull, run = calls(docker_log)
    registry = registry_of(image)
    assert login["argv"][2:] == ["login", "--username", NULL_USER, "--password-stdin", registry]
    assert login["stdin"] == REFRESH_TOKEN
    assert pull["argv"][2:] == ["pull", image]
    assert login["argv"][:2] == pull["argv"][:2] == run["argv"][:2]  # docker --config <own>
    argv = run["argv"]
    assert (
        argv[0] == "--config"
        and argv[2] == "run"
        and ("--pull", "never") in itertools.pairwise(argv)
    )
    assert argv[argv.index(image) + 1 :][0] == "python"
    assert argv[-2:] == ["--epochs", "3; reboot"]  # one argument each, no shell
    for call in calls(docker_log):
        assert REFRESH_TOKEN not in json.dumps(call["argv"]) and AAD_TOKEN not in json.dumps(call)
    log = get_bytes(artifacts, names.run_key("train-0123456789ab", names.log_file(0))).decode()
    assert "ran in the image with ['--epochs', '3; reboot']" in log
    assert REFRESH_TOKEN not in log and AAD_TOKEN not in log
    assert not Path(argv[1]).exists()  # the login's folder goes with the job


def test_a_registry_that_refuses_the_vm_identity_fails_the_job_saying_to_grant_acrpull(
    azure: type[Azure], vm: tuple[str, Path], tmp_path: Path, code_dir: Path
) -> None:
    azure.refuse = True
    image, docker_log = vm
    artifacts = open_artifacts(f"file://{tmp_path / 'bucket'}")
    write_script(code_dir, "open('/tmp/never', 'w')\n")
    stage(artifacts, "train-0123456789ac", code_dir, image)

    result = Runner(artifacts, "train-0123456789ac", tmp_path / "work").run()

    assert result.status is RunStatus.FAILED
    assert f"{registry_of(image)} refused the VM's identity (401" in str(result.reason)
    assert "grant the VM identity AcrPull" in str(result.reason)
    assert not docker_log.exists()  # no login, no pull, no run: the code never started
    assert result.started_at is None

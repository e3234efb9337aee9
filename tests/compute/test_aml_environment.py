"""The runner's Azure ML environment: versioned by its content, registered once per version.

The real ``MLClient`` against the ARM simulator, whose environment versions cannot change, as on
Azure ML ("already registered and cannot be changed", 409).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from compute.aml import ENVIRONMENT, GROUP, WORKSPACE, AmlPlayer, aml_env, register
from compute.cloud import ephemerid, record, settle
from drive import log_of, spec_for, write_script
from ephemerid.app import build_service
from ephemerid.azure import clients
from ephemerid.compute.aml_environment import RunnerEnvironment, default_conda
from ephemerid.errors import BadInput
from ephemerid.record import JobState
from ephemerid.settings import Settings
from ephemerid.testing.arm import SUBSCRIPTION, ArmSimulator


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(aml_queue_s=0.05, aml_cancel_s=0.05) as simulator:
        yield simulator


@pytest.fixture
def env(tmp_path: Path, sim: ArmSimulator) -> dict[str, str]:
    return aml_env(tmp_path / "home", sim)


def versions(sim: ArmSimulator) -> dict[str, Any]:
    """Each registered version of ephemerid-runner: its conda definition, parsed."""
    found = sim.ml.environments(GROUP, WORKSPACE).versions
    return {v: yaml.safe_load(e.props["condaFile"]) for (n, v), e in found.items()}


def environment_of(sim: ArmSimulator, index: int = -1) -> str:
    """The environment version the job (the last one submitted) runs in."""
    return str(sim.ml.created[index].props["environmentId"]).rsplit("/", 1)[-1]


def environment_puts(sim: ArmSimulator) -> list[Any]:
    return [r for r in sim.requests if r.method == "PUT" and "/environments/" in r.path]


def conda_file(tmp_path: Path, *extra: str) -> Path:
    """ephemerid's conda definition with ``extra`` pip packages, as a user edits it."""
    conda = default_conda()
    conda["dependencies"][-1]["pip"].extend(extra)
    path = tmp_path / f"conda-{len(extra)}.yml"
    path.write_text(yaml.safe_dump(conda))
    return path


def test_the_runner_environment_is_registered_once_under_a_version_named_by_its_content(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    runner = RunnerEnvironment.load()
    with ephemerid(env) as azure:
        first = azure.submit(spec_for(code_dir, idempotency_key="1")).job
        second = azure.submit(spec_for(code_dir, idempotency_key="2")).job
    with ephemerid(env) as restarted:  # another function instance
        third = restarted.submit(spec_for(code_dir, idempotency_key="3")).job

    assert [j.state for j in (first, second, third)] == [JobState.RUNNING] * 3
    assert re.fullmatch(r"[0-9a-f]{16}", runner.version)
    assert versions(sim) == {runner.version: runner.conda}
    assert len(environment_puts(sim)) == 1
    assert {environment_of(sim, i) for i in range(3)} == {runner.version}
    pip = runner.conda["dependencies"][-1]["pip"]
    assert "ephemerid[azure]==0.1.0" in pip  # the runner's contract is this ephemerid's


def test_an_edited_conda_file_is_a_new_environment_version_and_the_job_still_provisions(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    register(sim, RunnerEnvironment.load(), version="1")  # what an earlier deploy registered
    edited, again = conda_file(tmp_path, "transformers==4.46.0"), conda_file(tmp_path, "a", "b")

    with ephemerid(env, EPHEMERID_AML_CONDA_FILE=str(edited)) as azure:
        job = azure.submit(spec_for(code_dir, idempotency_key="edited")).job
        first = environment_of(sim)
    with ephemerid(env, EPHEMERID_AML_CONDA_FILE=str(again)) as azure:
        later = azure.submit(spec_for(code_dir, idempotency_key="again")).job
        second = environment_of(sim)

    assert (job.state, later.state) == (JobState.RUNNING, JobState.RUNNING)
    registered = versions(sim)
    assert sorted(registered) == sorted(["1", first, second]) and len({first, second}) == 2
    assert registered[first] == yaml.safe_load(edited.read_text())
    assert registered[second] == yaml.safe_load(again.read_text())
    assert registered["1"] == default_conda()  # never re-created with other content
    assert sim.ml.environments(GROUP, WORKSPACE).versions[("ephemerid-runner", "1")].puts == 1


def test_an_environment_version_cannot_change_its_content_as_on_azure_ml(
    sim: ArmSimulator,
) -> None:
    from azure.core.exceptions import ResourceExistsError

    sim.ml.workspace(GROUP, WORKSPACE)
    ml = clients.ml_client(SUBSCRIPTION, GROUP, WORKSPACE, sim.endpoint)
    runner = RunnerEnvironment.load()
    ml.environments.create_or_update(runner.entity())
    changed = RunnerEnvironment(runner.conda, image="mcr.microsoft.com/azureml/other:1").entity()
    changed.version = runner.version

    with pytest.raises(ResourceExistsError, match="is already registered and cannot be changed"):
        ml.environments.create_or_update(changed)

    again = runner.entity()
    again.description = "only the description changes"
    assert ml.environments.create_or_update(again).version == runner.version  # same content: 200
    assert ml.environments.get(runner.name, version=runner.version).image == runner.image


def test_a_version_registered_with_other_content_fails_the_job_saying_what_to_do(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    runner = RunnerEnvironment.load()
    register(sim, RunnerEnvironment(runner.conda, image="someone/else:1"), runner.version)
    write_script(code_dir, "print('hi')\n")

    with ephemerid(env) as azure:
        job = azure.submit(spec_for(code_dir)).job

    assert job.state is JobState.FAILED
    assert f"environment ephemerid-runner:{runner.version} in workspace 'mlw-test'" in job.reason
    assert "archive or delete that version" in job.reason
    assert sim.ml.created == []


def test_a_named_environment_is_used_as_is_and_nothing_is_registered(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    register(sim, RunnerEnvironment.load(), version="1")
    with ephemerid(env, EPHEMERID_AML_ENVIRONMENT=ENVIRONMENT) as azure:
        handle = azure.backends["azure-ml"].provision(record(spec_for(code_dir)))

    assert handle.data["aml_job"]
    assert environment_of(sim) == "1"
    assert environment_puts(sim) == []


def test_a_job_naming_an_environment_that_is_not_registered_is_refused_by_azure_ml(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    with ephemerid(env, EPHEMERID_AML_ENVIRONMENT="azureml:mine:7") as azure:
        job = azure.submit(spec_for(code_dir)).job

    assert job.state is JobState.FAILED
    assert "Environment" in job.reason and "was not found in workspace 'mlw-test'" in job.reason


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot be read"),
        ("dependencies: [unclosed", "is not YAML"),
        ("name: runner\n", "needs a 'dependencies' list"),
    ],
)
def test_a_conda_file_that_is_no_conda_environment_is_refused_at_start(
    env: dict[str, str], tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "conda.yml"
    if text is not None:
        path.write_text(text)

    with pytest.raises(BadInput, match=re.escape(message)) as refused:
        build_service(Settings.from_env({**env, "EPHEMERID_AML_CONDA_FILE": str(path)}))

    assert f"EPHEMERID_AML_CONDA_FILE='{path}'" in str(refused.value)


def test_a_conda_file_beside_a_named_environment_is_refused_at_start(
    env: dict[str, str], tmp_path: Path
) -> None:
    settings = {"EPHEMERID_AML_ENVIRONMENT": ENVIRONMENT, "EPHEMERID_AML_IMAGE": "mine:1"}
    with pytest.raises(BadInput, match="unset one or the other"):
        build_service(Settings.from_env({**env, **settings}))


# -- a job's own environment ----------------------------------------------------------------


def job_versions(sim: ArmSimulator) -> dict[str, Any]:
    """Each registered version of ephemerid-job: its properties."""
    found = sim.ml.environments(GROUP, WORKSPACE).versions
    return {v: e.props for (n, v), e in found.items() if n == "ephemerid-job"}


def test_a_jobs_pip_environment_is_registered_once_and_a_second_job_registers_nothing(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    environment = {"pip": ["scikit-learn==1.5.2"]}
    with ephemerid(env) as azure:
        first = azure.submit(spec_for(code_dir, environment=environment, idempotency_key="1")).job
        second = azure.submit(spec_for(code_dir, environment=environment, idempotency_key="2")).job
    with ephemerid(env) as restarted:  # another function instance: it finds it, registers none
        third = restarted.submit(spec_for(code_dir, environment=environment, idempotency_key="3"))

    assert [j.state for j in (first, second, third.job)] == [JobState.RUNNING] * 3
    assert first.environment == second.environment == third.job.environment
    [(version, props)] = job_versions(sim).items()
    conda = yaml.safe_load(props["condaFile"])
    assert conda["dependencies"][-1]["pip"] == ["ephemerid[azure]==0.1.0", "scikit-learn==1.5.2"]
    assert props["image"] == RunnerEnvironment.load().image  # the runner's base image
    assert len(environment_puts(sim)) == 1  # the job's environment only, not the runner's too
    assert {environment_of(sim, i) for i in range(3)} == {version}
    for created in sim.ml.created:
        told = created.props["environmentVariables"]
        assert told["EPHEMERID_ENVIRONMENT_READY"] == first.environment


def test_an_image_environment_is_registered_as_the_image_itself(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    image = "crephemerid.azurecr.io/train:1.4"
    with ephemerid(env) as azure:
        job = azure.submit(spec_for(code_dir, environment={"image": image})).job

    [(version, props)] = job_versions(sim).items()
    assert job.state is JobState.RUNNING and environment_of(sim) == version
    assert props["image"] == image and not props.get("condaFile")


def test_an_environment_naming_a_wheel_of_the_code_is_built_by_the_runner_on_the_node(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    (code_dir / "wheels").mkdir()
    (code_dir / "wheels" / "mine-1.0-py3-none-any.whl").write_bytes(b"not needed here")
    environment = {"pip": ["./wheels/mine-1.0-py3-none-any.whl"]}
    with ephemerid(env) as azure:
        job = azure.submit(spec_for(code_dir, environment=environment)).job

    assert job.state is JobState.RUNNING
    assert job_versions(sim) == {}
    assert environment_of(sim) == RunnerEnvironment.load().version  # the runner's own
    assert "EPHEMERID_ENVIRONMENT_READY" not in sim.ml.created[0].props["environmentVariables"]


def test_a_job_in_its_registered_environment_builds_nothing_on_the_node(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "print('ran in the registered environment')\n")
    # no index could give this: the node must not try to install it (Azure ML's image has it)
    environment = {"pip": ["ephemerid-test-not-on-any-index==9.9"]}
    with AmlPlayer(sim, tmp_path / "nodes"), ephemerid(env) as azure:
        job = azure.submit(spec_for(code_dir, environment=environment)).job
        [done] = settle(azure, [job.id])
        log = log_of(azure, job.id)

    assert done.state is JobState.SUCCEEDED, done.reason
    assert done.setup_s == 0.0
    assert f"environment {job.environment} is this compute's own: nothing to build" in log
    assert "ran in the registered environment" in log


@pytest.mark.parametrize(
    ("text", "registered"),
    [
        (
            "scikit-learn==1.5.2  # pinned\n--prefer-binary\n",
            ["scikit-learn==1.5.2", "--prefer-binary"],
        ),
        ("--find-links ./wheels\nmine==1.0\n", None),  # a folder of the code: built on the node
        ("-r base.txt\n", None),
    ],
)
def test_a_requirements_file_is_registered_as_its_lines_unless_it_names_the_codes_files(
    env: dict[str, str], sim: ArmSimulator, code_dir: Path, text: str, registered: list[str] | None
) -> None:
    write_script(code_dir, "print('hi')\n")
    (code_dir / "requirements.txt").write_text(text)
    (code_dir / "base.txt").write_text("numpy\n")
    (code_dir / "wheels").mkdir()
    (code_dir / "wheels" / "mine-1.0-py3-none-any.whl").write_bytes(b"w")
    with ephemerid(env) as azure:
        job = azure.submit(spec_for(code_dir, environment={"requirements": "requirements.txt"})).job

    assert job.state is JobState.RUNNING, job.reason
    pips = [
        yaml.safe_load(p["condaFile"])["dependencies"][-1]["pip"]
        for p in job_versions(sim).values()
    ]
    assert pips == ([["ephemerid[azure]==0.1.0", *registered]] if registered else [])

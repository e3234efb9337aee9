"""Environments: a job brings its own packages, built once per identity, hermetically.

Every package here is a wheel the test makes (``wheels.make_wheel``), installed with
``--no-index --find-links ./wheels``: no test needs a package index.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drive import wait_for
from ephemerid.artifacts import get_bytes
from ephemerid.cli.render import idle_s
from ephemerid.contract import LaunchEnvironment
from ephemerid.envs import cache
from ephemerid.envs.build import LOCKS, MARKER, Environments, Ready, lock_path
from ephemerid.envs.container import docker_command
from ephemerid.envs.identity import identify
from ephemerid.envs.spec import Environment
from ephemerid.errors import SpecError
from ephemerid.record import ComputeState, JobRecord, JobState
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.spec import load_spec, validate_spec
from ephemerid.testing.settle import settle
from wheels import local_requirements, make_wheel

PACKAGE = "ephtestpkg"  # a package no interpreter here has: only the job's environment
SCRIPT = f"""
import json, os, pathlib, sys
import {PACKAGE}
from ephemerid import track
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "seen.json").write_text(json.dumps({{"value": {PACKAGE}.VALUE, "python": sys.executable}}))
track.log_metric("value", {PACKAGE}.VALUE)
"""
EPH = Path(sys.executable).with_name("eph")
AT = datetime(2026, 12, 2, tzinfo=UTC)


@pytest.fixture
def env_code(code_dir: Path) -> Path:
    """A code folder whose requirements install ``ephtestpkg`` from a wheel inside it."""
    make_wheel(code_dir / "wheels", PACKAGE, "1.0", "VALUE = 42\n")
    local_requirements(code_dir, f"{PACKAGE}==1.0")
    (code_dir / "job.py").write_text(SCRIPT)
    return code_dir


def spec_of(code: Path, **environment: Any) -> dict[str, Any]:
    env = environment or {"requirements": "requirements.txt"}
    return {"kind": "train", "code": str(code), "entrypoint": "job.py", "environment": env}


def run(service: Service, *specs: dict[str, Any]) -> list[JobRecord]:
    ids = [service.submit(validate_spec(spec)).job.id for spec in specs]
    return settle(service, ids, timeout=120)


def seen(service: Service, job: JobRecord) -> dict[str, Any]:
    return dict(json.loads(get_bytes(service.artifacts, f"runs/{job.id}/outputs/seen.json")))


def log_of(service: Service, job: JobRecord) -> str:
    return service.read_log(job.id).decode()


# -- a job runs in its environment -----------------------------------------------------------


def test_a_job_whose_caller_lacks_a_package_its_environment_has_succeeds(
    service: Service, env_code: Path
) -> None:
    assert importlib.util.find_spec(PACKAGE) is None  # the caller does not have it

    [job] = run(service, spec_of(env_code))

    assert job.state is JobState.SUCCEEDED, job.reason
    assert job.compute_state is ComputeState.RELEASED
    assert job.metrics == {"value": 42.0}
    envs = service.settings.home / "envs"
    assert seen(service, job)["python"] == str(envs / job.environment / "bin" / "python")
    assert job.setup_s is not None and job.setup_s > 0
    assert "building environment" in log_of(service, job)


def test_a_pip_list_installs_a_wheel_named_by_its_path_in_the_code(
    service: Service, code_dir: Path
) -> None:
    wheel = make_wheel(code_dir / "wheels", PACKAGE, "1.0", "VALUE = 7\n")
    (code_dir / "job.py").write_text(SCRIPT)

    [job] = run(service, spec_of(code_dir, pip=[f"./wheels/{wheel.name}"]))

    assert job.state is JobState.SUCCEEDED, job.reason
    assert job.metrics == {"value": 7.0}


def test_two_jobs_with_one_environment_build_it_once(service: Service, env_code: Path) -> None:
    first, second = run(service, spec_of(env_code), spec_of(env_code))

    assert first.state is second.state is JobState.SUCCEEDED, (first.reason, second.reason)
    assert first.environment == second.environment
    logs = log_of(service, first) + log_of(service, second)
    assert logs.count("building environment") == 1


def test_a_cached_environment_is_reused(service: Service, env_code: Path) -> None:
    [first] = run(service, spec_of(env_code))
    marker = service.settings.home / "envs" / first.environment / MARKER
    built = marker.read_text()

    [second] = run(service, spec_of(env_code))

    assert second.state is JobState.SUCCEEDED, second.reason
    assert second.environment == first.environment
    assert "(cached)" in log_of(service, second)
    assert "building environment" not in log_of(service, second)
    assert marker.read_text() == built


@pytest.mark.parametrize(
    ("requirement", "named"),
    [("nosuchpkg==1.0", "nosuchpkg"), (f"{PACKAGE}==2.0", PACKAGE)],
    ids=["a package that does not exist", "a version that is not there"],
)
def test_a_failed_build_fails_the_job_with_the_installers_lines_and_releases_compute(
    service: Service, env_code: Path, requirement: str, named: str
) -> None:
    local_requirements(env_code, requirement)

    [job] = run(service, spec_of(env_code))

    assert job.state is JobState.FAILED
    assert job.compute_state is ComputeState.RELEASED
    assert "could not be built" in job.reason and named in job.reason
    assert job.started_at is None  # the user's code never ran
    assert not (service.settings.home / "envs" / job.environment).exists()


def test_a_conflict_between_two_requirements_fails_the_job(
    service: Service, env_code: Path
) -> None:
    make_wheel(env_code / "wheels", PACKAGE, "2.0")
    local_requirements(env_code, f"{PACKAGE}==1.0", f"{PACKAGE}>=2.0")

    [job] = run(service, spec_of(env_code))

    assert job.state is JobState.FAILED
    assert job.compute_state is ComputeState.RELEASED
    assert PACKAGE in job.reason


def test_a_job_without_an_environment_runs_with_the_runners_python(
    service: Service, code_dir: Path
) -> None:
    (code_dir / "job.py").write_text("print('plain')\n")

    [job] = run(service, {"kind": "train", "code": str(code_dir), "entrypoint": "job.py"})

    assert job.state is JobState.SUCCEEDED
    assert job.environment == "" and job.setup_s is None


# -- refused at submit, nothing stored or rented ---------------------------------------------


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (["--index-url https://example.invalid/simple", "x"], "another index"),
        (["--extra-index-url=https://example.invalid/simple", "x"], "another index"),
        (["-i https://example.invalid/simple"], "another index"),
        (["x @ https://user:secret@example.invalid/x.whl"], "user or password"),
        (["--find-links https://example.invalid/wheels"], "is a URL"),
        (["-r https://example.invalid/more.txt"], "is a URL"),
        (["x==${TOKEN}"], "environment variable"),
        (["../outside.whl"], "leaves the job's code folder"),
        (["/abs/x.whl"], "absolute path"),
        (["./wheels/missing.whl"], "not in the job's code folder"),
        (["-r other.txt"], "not a file in the job's code folder"),
        (["--user"], "option '--user' is not allowed"),
        (["-e ./mypackage"], "editable install"),
    ],
)
def test_a_requirements_line_that_cannot_be_trusted_is_refused_at_submit(
    service: Service, env_code: Path, lines: list[str], says: str
) -> None:
    (env_code / "requirements.txt").write_text("\n".join(lines) + "\n")

    with pytest.raises(SpecError, match="line 1") as refused:
        service.submit(validate_spec(spec_of(env_code)))

    assert says in str(refused.value)
    assert service.store.list() == []


def test_a_requirements_file_that_does_not_exist_is_refused_at_submit(
    service: Service, env_code: Path
) -> None:
    with pytest.raises(SpecError, match=r"environment.requirements: 'nope.txt' is not a file"):
        service.submit(validate_spec(spec_of(env_code, requirements="nope.txt")))
    assert service.store.list() == []


@pytest.mark.parametrize(
    ("environment", "says"),
    [
        ({"requirements": "r.txt", "image": "train:1"}, "exclude each other"),
        ({"pip": ["x"], "requirements": "r.txt"}, "exclude each other"),
        ({"image": "train:1; rm -rf /"}, "not a container image name"),
        ({"image": "$(reboot)"}, "not a container image name"),
        ({"pip": ["x"], "python": 3.11}, "in quotes"),
        ({"pip": ["--index-url=https://example.invalid"]}, "installer option"),
        ({}, "needs one of requirements"),
        ({"requirements": "../r.txt"}, "inside the job's code folder"),
    ],
)
def test_a_bad_environment_field_is_refused_naming_it(
    env_code: Path, environment: dict[str, Any], says: str
) -> None:
    with pytest.raises(SpecError, match="environment") as refused:
        validate_spec(spec_of(env_code, **environment) if environment else _empty(env_code))
    assert says in str(refused.value)


def _empty(code: Path) -> dict[str, Any]:
    return {**spec_of(code), "environment": {}}


def test_an_image_name_with_a_digest_is_accepted() -> None:
    name = "myregistry.azurecr.io:5000/team/train:1.4@sha256:" + "a" * 64
    assert Environment(image=name).image == name


# -- identity --------------------------------------------------------------------------------


def identity_of(code: Path, **environment: Any) -> str:
    files = {p.relative_to(code).as_posix(): p.read_bytes for p in code.rglob("*") if p.is_file()}
    return identify(Environment(**environment), files).id


def test_the_identity_follows_what_defines_the_environment(env_code: Path) -> None:
    base = identity_of(env_code, requirements="requirements.txt")

    assert identity_of(env_code, requirements="requirements.txt") == base
    assert identity_of(env_code, requirements="requirements.txt", python="3.99") != base
    assert identity_of(env_code, requirements="requirements.txt", inherit=True) != base
    (env_code / "job.py").write_text("# code the environment does not depend on\n")
    assert identity_of(env_code, requirements="requirements.txt") == base
    make_wheel(env_code / "wheels", PACKAGE, "1.0", "VALUE = 43\n")  # the same name, new bytes
    assert identity_of(env_code, requirements="requirements.txt") != base


# -- the build without uv, and the cache -----------------------------------------------------


def test_without_uv_the_environment_is_built_with_venv_and_pip(
    env_code: Path, tmp_path: Path
) -> None:
    plan = LaunchEnvironment(
        id=identity_of(env_code, requirements="requirements.txt"),
        requirements="requirements.txt",
    )
    lines: list[bytes] = []

    ready = Environments(tmp_path / "envs", installer="pip").prepare(
        plan, env_code, tmp_path, lines.append
    )
    ready.close()

    out = subprocess.run(
        [str(ready.python), "-c", f"import {PACKAGE}; print({PACKAGE}.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "42"
    assert b"building environment" in lines[0] and b"with pip" in lines[0]
    assert json.loads((ready.python.parents[1] / MARKER).read_text())["installer"] == "pip"


def test_concurrent_jobs_needing_one_environment_wait_for_one_build(
    env_code: Path, tmp_path: Path
) -> None:
    plan = LaunchEnvironment(id="d" * 16, requirements="requirements.txt")
    lines: list[bytes] = []
    start = threading.Barrier(4)

    def prepare(n: int) -> Ready:
        start.wait(timeout=30)
        work = tmp_path / f"job-{n}"
        work.mkdir()
        return Environments(tmp_path / "envs").prepare(plan, env_code, work, lines.append)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ready = list(pool.map(prepare, range(4)))
    for each in ready:
        each.close()

    assert sum(r.built for r in ready) == 1
    assert sum(line.startswith(b"building environment") for line in lines) == 1
    assert {r.python for r in ready} == {tmp_path / "envs" / plan.id / "bin" / "python"}


def test_a_job_waits_for_a_build_in_progress_and_prune_leaves_it_alone(
    env_code: Path, tmp_path: Path
) -> None:
    root = tmp_path / "envs"
    plan = LaunchEnvironment(id="e" * 16, requirements="requirements.txt")
    (root / LOCKS).mkdir(parents=True)
    building = os.open(lock_path(root, plan.id).with_suffix(".build"), os.O_CREAT | os.O_RDWR)
    fcntl.flock(building, fcntl.LOCK_EX)  # another job's build, under way
    (root / plan.id).mkdir()
    (root / plan.id / "half-written").touch()
    lines: list[bytes] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(Environments(root).prepare, plan, env_code, tmp_path, lines.append)
        wait_for(lambda: lines, "the job to say it waits")

        assert lines[0].startswith(b"waiting for another job's build")
        assert not waiting.done()
        assert [c.id for c in cache.prune(root).in_use] == [plan.id]  # the waiting job's
        assert (root / plan.id / "half-written").exists()
        os.close(building)  # that build ended without a marker: this job builds it
        ready = waiting.result(timeout=60)
    ready.close()

    assert ready.built and ready.python.is_file()


def test_prune_removes_unused_environments_and_keeps_one_in_use(
    env_code: Path, tmp_path: Path
) -> None:
    root = tmp_path / "envs"
    kept = LaunchEnvironment(id="a" * 16, packages=[f"./wheels/{PACKAGE}-1.0-py3-none-any.whl"])
    gone = LaunchEnvironment(id="b" * 16, packages=kept.packages)
    builds = Environments(root)
    in_use = builds.prepare(kept, env_code, tmp_path, lambda _: None)
    builds.prepare(gone, env_code, tmp_path, lambda _: None).close()

    pruned = cache.prune(root)

    assert [c.id for c in pruned.removed] == [gone.id]
    assert [c.id for c in pruned.in_use] == [kept.id]
    assert in_use.python.is_file()
    in_use.close()
    assert [c.id for c in cache.prune(root).removed] == [kept.id]
    assert cache.list_environments(root) == []


def test_eph_envs_lists_and_prunes_as_json(
    service: Service, env_code: Path, tmp_path: Path
) -> None:
    [job] = run(service, spec_of(env_code))
    env = {**os.environ, "EPHEMERID_HOME": str(service.settings.home)}

    def eph(*args: str) -> Any:
        done = subprocess.run(
            [str(EPH), "envs", *args, "--json"], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    status = subprocess.run(
        [str(EPH), "status", job.id], capture_output=True, text=True, env={**env, "COLUMNS": "200"}
    )
    assert f"environment           {job.environment}   setup " in status.stderr + status.stdout
    [listed] = eph("list")
    assert listed["id"] == job.environment and listed["ready"] and not listed["in_use"]
    assert listed["requirements"] == "requirements.txt"
    assert eph("prune", "--older-than", "1d")["kept"] == [job.environment]
    assert eph("prune")["removed"] == [job.environment]
    assert eph("list") == []


def test_an_image_runs_from_a_docker_argument_list_with_variables_passed_by_name(
    tmp_path: Path,
) -> None:
    image = "myregistry.azurecr.io/train:1.4"
    command = ["python", "-u", str(tmp_path / "code" / "job.py"), "--epochs", "3; reboot"]
    env = {"EPHEMERID_PARAMS": str(tmp_path / "params.json"), "MY_TOKEN": "s3cret", "PATH": "/x"}

    argv = docker_command(
        image, name="ephemerid-j-0", work=tmp_path, cwd=tmp_path, command=command, env=env, gpu="1"
    )

    assert argv[:2] == ["docker", "run"]
    assert argv[argv.index(image) + 1 :] == command  # one argument each, no shell
    assert "s3cret" not in argv and "--volume" in argv and f"{tmp_path}:{tmp_path}" in argv
    pairs = list(itertools.pairwise(argv))
    assert ("--env", "MY_TOKEN") in pairs and ("--env", "PATH") not in pairs
    assert ("--gpus", "device=1") in pairs


# -- the examples ----------------------------------------------------------------------------


def test_the_examples_declare_environments_that_pass_the_submit_checks() -> None:
    examples = Path(__file__).resolve().parents[1] / "examples"
    rules = Rules.load(examples / "ephemerid.yaml")
    [match] = rules.match_blob("incoming/sklearn/iris.csv", uri="u", etag="e", at=AT)
    tabular = load_spec(examples / "tabular" / "train.yaml")

    for code, env in [
        (Path(match.spec.code), match.spec.environment),
        (examples / "tabular", tabular.environment),
    ]:
        assert env is not None and env.requirements == "requirements.txt"
        assert identity_of(code, requirements=env.requirements)
    assert "scikit-learn" in (examples / "sklearn" / "requirements.txt").read_text()


def test_the_setup_is_neither_runtime_nor_paid_idle() -> None:
    start = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    job = JobRecord(
        id="train-x",
        key="k",
        spec=validate_spec({"kind": "train", "code": ".", "entrypoint": "a.py"}),
        source="test",
        compute_requested_at=start,
        started_at=start + timedelta(seconds=6),
        finished_at=start + timedelta(seconds=9),
        released_at=start + timedelta(seconds=10),
        setup_s=5.0,
    )

    assert job.runtime_s == 3.0
    assert idle_s(job) == 2.0

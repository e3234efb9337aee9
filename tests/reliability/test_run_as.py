"""``--run-as``, for real: the entrypoint runs as an unprivileged OS user made for the test.

The runner (root here, as on the VM) stages the job, starts the entrypoint as a throwaway system
user, and uploads what it wrote. That user cannot read a root-only file the runner can. Making a
user needs root: as anyone else the test is skipped, saying so (CI runs it as root).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ephemerid import names
from ephemerid.artifacts import ArtifactStore, get_bytes, open_artifacts, put_bytes
from ephemerid.contract import Launch, LaunchEnvironment, Result, RunStatus
from registries import docker_on_path, serve

JOB = "train-0000000000aa"
SCRIPT = """
import json, os, pathlib
from ephemerid import track

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
seen = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
for name, path in [("secret", params["secret"]), ("runner_env", f"/proc/{os.getppid()}/environ")]:
    try:
        pathlib.Path(path).read_bytes()
        seen[name] = "read"
    except PermissionError:
        seen[name] = "refused"
try:
    (pathlib.Path(__file__).parent / "planted.py").write_text("x")
    seen["code"] = "written"
except PermissionError:
    seen["code"] = "refused"
print(json.dumps(seen), flush=True)
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "seen.json").write_text(json.dumps(seen))
(pathlib.Path(os.environ["EPHEMERID_CHECKPOINT_DIR"]) / "step").write_text("1")
(pathlib.Path(os.environ["HOME"]) / ".cache").mkdir()
track.log_metric("loss", 0.5)
"""


@pytest.fixture
def job_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("--run-as needs root to make a throwaway user (CI runs this as root)")
    name = f"ephtest{uuid.uuid4().hex[:8]}"
    useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    subprocess.run([*useradd, "--user-group", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder any user may reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="ephemerid-run-as-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def staged(root: Path, script: str, params: dict[str, str]) -> ArtifactStore:
    """A bucket under ``root`` holding ``script`` and the launch of job ``JOB`` that runs it."""
    store = open_artifacts(f"file://{root / 'bucket'}", {})
    put_bytes(store, "uploads/code/job.py", script.encode())
    launch = Launch(
        job_id=JOB,
        entrypoint="job.py",
        args=[],
        params=params,
        max_runtime_s=60,
        code="uploads/code",
        inputs={},
        model=None,
    )
    put_bytes(store, names.run_key(JOB, names.JOB_FILE), launch.dumps())
    return store


def reachable(path: Path) -> bool:
    """Whether any user may run ``path``: every folder above it open to others."""
    real = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in real.parents) and bool(real.stat().st_mode & 1)


def interpreter() -> tuple[str, list[str]]:
    """A Python the job's user may run, and the paths it needs to import the runner from."""
    ours = Path(sys.executable)
    if reachable(ours):
        return str(ours), []
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    other = shutil.which(version, path="/usr/local/bin:/usr/bin")
    if other is None or not reachable(Path(other)):
        pytest.skip(f"{ours} is under a folder other users cannot enter, and no {version} is")
    return other, [p for p in site.getsitepackages() if reachable(Path(p))]


@pytest.fixture
def azure() -> Iterator[type[Any]]:
    """The VM's metadata service and the registry, on loopback (tests/registries.py)."""
    with serve() as handler:
        yield handler


def run_as(
    store: ArtifactStore, work: Path, user: pwd.struct_passwd, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    """The runner, as the VM runs it, starting the entrypoint as ``user``."""
    python, paths = interpreter()
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, *paths])}
    runner = [python, "-m", "ephemerid.runner", "--artifacts", store.root_uri]
    return subprocess.run(
        [*runner, "--job", JOB, "--work-dir", str(work), "--run-as", user.pw_name],
        env=env,
        capture_output=True,
        timeout=timeout,
    )


def test_the_entrypoint_runs_as_the_job_user_reads_no_root_file_and_its_outputs_upload(
    job_user: pwd.struct_passwd, open_dir: Path
) -> None:
    secret = open_dir / "runner.env"
    secret.write_text("EPHEMERID_STORAGE=only-the-runner-reads-this\n")
    secret.chmod(0o600)
    store = staged(open_dir, SCRIPT, {"secret": str(secret)})
    work = open_dir / "work"

    done = run_as(store, work, job_user, timeout=120)

    result = Result.loads(get_bytes(store, names.run_key(JOB, names.RESULT_FILE)))
    log = get_bytes(store, names.run_key(JOB, names.LOG_FILE)).decode()
    assert done.returncode == 0 and result.status is RunStatus.SUCCEEDED, (result.reason, log)
    outputs = names.run_key(JOB, names.OUTPUTS_DIR)
    seen = json.loads(get_bytes(store, f"{outputs}/seen.json"))
    assert seen == {
        "uid": job_user.pw_uid,
        "gid": job_user.pw_gid,
        "groups": [],
        "secret": "refused",
        "runner_env": "refused",
        "code": "refused",
    }
    assert secret.read_text().startswith("EPHEMERID_STORAGE=")  # the runner's user reads it
    assert "only-the-runner-reads-this" not in log
    checkpoint = names.run_key(JOB, names.CHECKPOINT_DIR)
    assert get_bytes(store, f"{checkpoint}/step") == b"1"
    assert result.metrics == {"loss": 0.5}


def test_run_as_a_user_that_does_not_exist_fails_the_job_naming_it(open_dir: Path) -> None:
    store = staged(open_dir, "print('never runs')\n", {})
    runner = [sys.executable, "-m", "ephemerid.runner", "--artifacts", store.root_uri]

    done = subprocess.run(
        [*runner, "--job", JOB, "--work-dir", str(open_dir / "w"), "--run-as", "no-such-eph-user"],
        capture_output=True,
        timeout=120,
    )

    result = Result.loads(get_bytes(store, names.run_key(JOB, names.RESULT_FILE)))
    assert done.returncode == 1 and result.status is RunStatus.FAILED
    assert "--run-as no-such-eph-user" in result.reason and "no such user" in result.reason


def test_the_jobs_environment_is_built_by_the_job_user_never_by_root(
    job_user: pwd.struct_passwd, open_dir: Path
) -> None:
    """A package's build runs its own code: on a VM that is the job's code, kept from root's."""
    from wheels import make_wheel

    wheel = make_wheel(open_dir / "made", "ephvmpkg", "1.0", "VALUE = 7\n")
    store = staged(
        open_dir, "import ephvmpkg, os; print('value', ephvmpkg.VALUE, os.getuid())\n", {}
    )
    put_bytes(store, f"uploads/code/{wheel.name}", wheel.read_bytes())
    launch = Launch.loads(get_bytes(store, names.run_key(JOB, names.JOB_FILE)))
    planned = LaunchEnvironment(id="e" * 16, packages=[f"./{wheel.name}"])
    put_bytes(
        store,
        names.run_key(JOB, names.JOB_FILE),
        launch.model_copy(update={"environment": planned}).dumps(),
    )
    work = open_dir / "work"

    done = run_as(store, work, job_user, timeout=180)

    result = Result.loads(get_bytes(store, names.run_key(JOB, names.RESULT_FILE)))
    log = get_bytes(store, names.run_key(JOB, names.LOG_FILE)).decode()
    assert done.returncode == 0 and result.status is RunStatus.SUCCEEDED, (result.reason, log)
    assert f"value 7 {job_user.pw_uid}" in log
    built = work / "envs" / planned.id
    assert (built / "pyvenv.cfg").stat().st_uid == job_user.pw_uid  # the installer was the user
    assert (built / "ephemerid-env.json").is_file()


def test_an_image_job_runs_in_a_container_as_the_job_user_on_the_hosts_network(
    job_user: pwd.struct_passwd, open_dir: Path, azure: type[Any]
) -> None:
    """docker's client is the runner's (root: the job's user may not reach the docker socket);
    the code in the container is the job user's, on the host's network, where the firewall rule
    for that uid keeps it from IMDS."""
    registry = f"127.0.0.1:{azure.port}"
    image = f"{registry}/train:1.4"
    docker_log = open_dir / "docker.jsonl"
    docker_on_path(open_dir / "bin", docker_log, image)
    store = staged(open_dir, "print('in the image')\n", {})
    launch = Launch.loads(get_bytes(store, names.run_key(JOB, names.JOB_FILE)))
    planned = LaunchEnvironment(id="f" * 16, image=image)
    put_bytes(
        store,
        names.run_key(JOB, names.JOB_FILE),
        launch.model_copy(update={"environment": planned}).dumps(),
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": src,
        "PATH": f"{open_dir / 'bin'}:{os.environ['PATH']}",
        "EPHEMERID_VM_REGISTRY": registry,
        "EPHEMERID_IMDS": f"http://{registry}",
    }
    runner = [sys.executable, "-m", "ephemerid.runner", "--artifacts", store.root_uri]

    subprocess.run(
        [*runner, "--job", JOB, "--work-dir", str(open_dir / "w"), "--run-as", job_user.pw_name],
        env=env,
        capture_output=True,
        timeout=120,
    )

    result = Result.loads(get_bytes(store, names.run_key(JOB, names.RESULT_FILE)))
    assert result.status is RunStatus.SUCCEEDED, result.reason
    calls = [json.loads(line) for line in docker_log.read_text().splitlines()]
    assert [c["argv"][2] for c in calls] == ["login", "pull", "run"]
    assert {c["uid"] for c in calls} == {0}  # the runner's client, never the job's user
    pairs = list(zip(calls[-1]["argv"], calls[-1]["argv"][1:], strict=False))
    assert ("--user", f"{job_user.pw_uid}:{job_user.pw_gid}") in pairs
    assert ("--network", "host") in pairs

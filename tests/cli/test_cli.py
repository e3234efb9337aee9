"""`eph` as a user runs it: a subprocess, state under EPHEMERID_HOME, JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drive import HOLD_SCRIPT, Gate, alive, wait_gone, write_script
from ephemerid.app import build_service
from ephemerid.artifacts import put_bytes
from ephemerid.settings import Settings
from in_process import run_eph

EPH = Path(sys.executable).with_name("eph")

PARAMS_SCRIPT = """
import json, os, pathlib
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
print("params:", json.dumps(params, sort_keys=True))
model = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "model"
model.mkdir()
(model / "weights.txt").write_text("1 2 3")
"""

Eph = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def eph(home: Path, tmp_path: Path) -> Eph:
    """Run `eph ARGS` with EPHEMERID_HOME at this test's home; stderr comes back on one line."""
    env = {**os.environ, "EPHEMERID_HOME": str(home), "COLUMNS": "300", "NO_COLOR": "1"}

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(EPH), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=timeout,
        )
        done.stderr = " ".join(done.stderr.split())
        return done

    return run


@pytest.fixture
def eph_here(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Eph:
    """`eph ARGS` in this process, as the `eph` fixture's command would answer them."""
    env = {"EPHEMERID_AGENT_IDLE_S": os.environ.get("EPHEMERID_AGENT_IDLE_S", "5")}
    env.update(EPHEMERID_HOME=str(home), COLUMNS="300", NO_COLOR="1")
    return lambda *args: run_eph(args, env, tmp_path, monkeypatch)


def flags(code_dir: Path, *extra: str) -> list[str]:
    return ["submit", "--code", str(code_dir), "--entrypoint", "job.py", *extra]


def jobs_in(home: Path) -> list[Any]:
    service = build_service(Settings.from_env({}, home=home))
    try:
        return service.store.list()
    finally:
        service.close()


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_submit_from_flags_waits_for_the_job_and_prints_it_as_json(
    eph: Eph, code_dir: Path
) -> None:
    write_script(code_dir, PARAMS_SCRIPT)

    params = ("--param", "lr=0.1", "--param", "note=a; b", "--param", "epochs=3")
    done = eph(*flags(code_dir, *params, "--json"))

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "SUCCEEDED"
    assert job["compute_state"] == "released"
    assert job["exit_code"] == 0
    assert job["spec"]["params"] == {"lr": 0.1, "note": "a; b", "epochs": 3}
    assert job["source"] == "cli"


def test_submit_of_a_failing_script_exits_1_with_the_failed_job(eph: Eph, code_dir: Path) -> None:
    write_script(code_dir, "import sys\nprint('no data found')\nsys.exit(7)\n")

    done = eph(*flags(code_dir, "--json"))

    job = json.loads(done.stdout)
    assert job["state"] == "FAILED"
    assert job["exit_code"] == 7
    assert "no data found" in job["reason"]
    assert job["compute_state"] == "released"
    assert done.returncode == 1


def test_submit_without_json_streams_the_log_to_stdout(eph: Eph, code_dir: Path) -> None:
    write_script(code_dir, "print('a line from the job')\n")

    done = eph(*flags(code_dir))

    assert done.returncode == 0, done.stderr
    assert "a line from the job" in done.stdout
    assert "SUCCEEDED" in done.stderr


def test_a_spec_file_with_a_relative_code_dir_runs_from_beside_the_file(
    eph: Eph, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    write_script(project / "src", "print('from the spec file')\n", "train.py")
    (project / "job.yaml").write_text(
        "kind: train\ncode: ./src\nentrypoint: train.py\nparams: {epochs: 2}\n"
    )

    job = as_json(eph("submit", str(project / "job.yaml"), "--json"))

    assert job["state"] == "SUCCEEDED"
    assert job["spec"]["code"] == str((project / "src").resolve())


def test_submitting_twice_with_one_key_runs_once(eph: Eph, code_dir: Path) -> None:
    write_script(code_dir, "print('once')\n")
    args = flags(code_dir, "--key", "k1", "--json")

    first = as_json(eph(*args))
    second = as_json(eph(*args))

    assert second["id"] == first["id"]
    assert second["version"] == first["version"]


BAD = {
    "missing --entrypoint": (
        lambda code, tmp: ["submit", "--code", str(code)],
        "give a spec file, or both --code DIR and --entrypoint SCRIPT",
    ),
    "malformed spec file": (
        lambda code, tmp: ["submit", _file(tmp / "bad.yaml", "kind: train\ncode: [oops\n")],
        "is not valid YAML/JSON at line",
    ),
    "unknown field": (
        lambda code, tmp: [
            "submit",
            _file(
                tmp / "job.yaml", f"{{kind: train, code: {code}, entrypoint: job.py, colour: 1}}"
            ),
        ],
        "unknown field 'colour': remove it or check its spelling",
    ),
    "missing spec file": (
        lambda code, tmp: ["submit", str(tmp / "absent.yaml")],
        "cannot read spec file",
    ),
    "param without a value": (
        lambda code, tmp: flags(code, "--param", "lr"),
        "--param 'lr' must look like name=value",
    ),
    "bad duration": (
        lambda code, tmp: flags(code, "--max-runtime", "forever"),
        "'forever' is not a duration",
    ),
    "unknown backend": (
        lambda code, tmp: flags(code, "--backend", "nimbus"),
        "compute backend 'nimbus' is unknown",
    ),
    "nodes on a one-machine backend": (
        lambda code, tmp: flags(code, "--nodes", "2"),
        "compute.nodes: 2 nodes need a multi-node backend (azure-ml); 'local' runs each job",
    ),
    "no nodes": (
        lambda code, tmp: flags(code, "--nodes", "0"),
        "compute.nodes",
    ),
    "entrypoint not in code": (
        lambda code, tmp: ["submit", "--code", str(code), "--entrypoint", "train.py"],
        "entrypoint 'train.py' is not a file",
    ),
    "unknown job": (lambda code, tmp: ["status", "nope", "--json"], "no job 'nope'"),
    "follow a rank": (
        lambda code, tmp: ["logs", "train-000000000000", "-f", "--rank", "1"],
        "--follow streams rank 0's log",
    ),
    "unknown job to cancel": (lambda code, tmp: ["cancel", "nope"], "no job 'nope'"),
    "unknown state filter": (
        lambda code, tmp: ["list", "--state", "sleeping"],
        "--state: 'SLEEPING' is not a valid JobState",
    ),
}


def _file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_naming_the_problem_and_runs_nothing(
    eph_here: Eph, home: Path, code_dir: Path, tmp_path: Path, case: str
) -> None:
    _refused_naming_the_problem(eph_here, home, code_dir, tmp_path, case)


@pytest.mark.parametrize("case", ["malformed spec file", "unknown job"])
def test_bad_input_to_the_real_command_exits_2_naming_the_problem_and_runs_nothing(
    eph: Eph, home: Path, code_dir: Path, tmp_path: Path, case: str
) -> None:
    _refused_naming_the_problem(eph, home, code_dir, tmp_path, case)


def _refused_naming_the_problem(
    eph: Eph, home: Path, code_dir: Path, tmp_path: Path, case: str
) -> None:
    write_script(code_dir, "print('never runs')\n")
    make_args, message = BAD[case]
    jobs_in(home)  # the home exists (and is empty): only submit may start a new one

    done = eph(*make_args(code_dir, tmp_path))

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    if "--json" in done.args:  # the error as JSON on stdout too, for scripts
        error = json.loads(done.stdout)
        assert (error["exit_code"], message in error["error"]) == (2, True)
    else:
        assert done.stdout == ""
    assert jobs_in(home) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--colour", "blue"], "No such option: --colour"),
        (["status"], "missing argument 'job_id'"),
        (["submit", "--gpus", "two"], "invalid value for '--gpus'"),
    ],
)
def test_a_usage_error_exits_2_with_clicks_message(eph: Eph, args: list[str], message: str) -> None:
    done = eph(*args)

    assert "Traceback" not in done.stderr
    assert message.lower() in done.stderr.lower()
    assert done.returncode == 2


def test_every_read_command_prints_json(eph: Eph, eph_here: Eph, code_dir: Path) -> None:
    write_script(code_dir, PARAMS_SCRIPT)
    register = ("--param", "lr=0.5", "--register", "churn@production", "--json")
    job = as_json(eph(*flags(code_dir, *register)))

    listed = as_json(eph("list", "--json"))  # the reads after this one in this process
    status = as_json(eph_here("status", job["id"], "--json"))
    logs = as_json(eph_here("logs", job["id"], "--json"))
    models = as_json(eph_here("models", "list", "--json"))
    reaped = as_json(eph_here("reap", "--json"))
    succeeded = as_json(eph_here("list", "--state", "succeeded", "--json"))

    assert [j["id"] for j in listed] == [job["id"]]
    assert [j["id"] for j in succeeded] == [job["id"]]
    assert status["state"] == "SUCCEEDED"
    assert status["model_version"] == "churn:1"
    assert logs["job"] == job["id"]
    assert 'params: {"lr": 0.5}' in logs["log"]
    assert [(m["name"], m["version"], m["aliases"]) for m in models] == [
        ("churn", 1, ["production"])
    ]
    assert reaped == {"actions": []}


def test_logs_of_a_rank_show_that_ranks_own_log(
    eph: Eph, eph_here: Eph, home: Path, code_dir: Path
) -> None:
    write_script(code_dir, "print('rank zero speaks')\n")
    job = as_json(eph(*flags(code_dir, "--json")))
    service = build_service(Settings.from_env({}, home=home))
    try:  # what rank 1 of a distributed job streams (tests/compute/test_azure_ml.py runs one)
        put_bytes(service.artifacts, f"runs/{job['id']}/output.rank-1.log", b"rank one speaks\n")
    finally:
        service.close()

    one = as_json(eph_here("logs", job["id"], "--rank", "1", "--json"))
    printed = eph_here("logs", job["id"], "--rank", "1")
    zero = as_json(eph_here("logs", job["id"], "--json"))

    assert (one["rank"], one["log"]) == (1, "rank one speaks\n")
    assert "rank one speaks" in printed.stdout and "rank zero" not in printed.stdout
    assert "rank zero speaks" in zero["log"]


def test_a_detached_job_can_be_cancelled_and_its_compute_is_released(
    eph: Eph, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, HOLD_SCRIPT)

    detach = ("--param", f"gate={gate.path}", "--detach", "--json")
    started = as_json(eph(*flags(code_dir, *detach)))
    script = gate.pid()
    cancelled = as_json(eph("cancel", started["id"], "--json"))

    assert started["state"] == "RUNNING"
    assert cancelled["state"] == "CANCELLED"
    assert cancelled["compute_state"] == "released"
    wait_gone([started["handle"]["pid"], script])
    assert not alive(script)
    assert as_json(eph("reap", "--json")) == {"actions": []}


def test_demo_refuses_a_home_that_is_not_a_demo_folder(eph: Eph, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")

    done = eph("demo", "--json", "--home", str(tmp_path))

    assert done.returncode == 2
    assert "is not a demo folder" in done.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"

"""The CLI's conventions, as a user at a terminal or a script reading stdout meets them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drive import HOLD_SCRIPT, Gate, write_script
from ephemerid import __version__
from ephemerid.app import build_service
from ephemerid.settings import Settings

EPH = Path(sys.executable).with_name("eph")

ECHO_SCRIPT = """
import json, os, pathlib, sys
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
print("params:", json.dumps(params, sort_keys=True))
print("argv:", json.dumps(sys.argv[1:]))
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    return {**os.environ, "EPHEMERID_HOME": str(home), "COLUMNS": "300", "NO_COLOR": "1"}


def eph(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EPH), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def submit(env: dict[str, str], code_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return eph(env, "submit", "--code", str(code_dir), "--entrypoint", "job.py", *extra)


def log_of(env: dict[str, str], job: dict[str, Any]) -> str:
    done = eph(env, "logs", job["id"], "--json")
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["log"])


def test_params_parse_as_json_and_anything_else_stays_the_string_written(
    env: dict[str, str], code_dir: Path
) -> None:
    write_script(code_dir, ECHO_SCRIPT)
    values = ["a=yes", "b=0x10", "c=null", "d=true", "e=3", "f=[1, 2]", "g=a; b", "h=1e3"]
    params = [arg for value in values for arg in ("--param", value)]

    done = submit(env, code_dir, *params, "--json")

    assert done.returncode == 0, done.stderr
    log = log_of(env, json.loads(done.stdout))
    expected = {"a": "yes", "b": "0x10", "c": None, "d": True, "e": 3, "f": [1, 2]}
    expected.update(g="a; b", h=1000.0)
    assert f"params: {json.dumps(expected, sort_keys=True)}" in log


def test_a_param_given_twice_is_refused_naming_it(env: dict[str, str], code_dir: Path) -> None:
    write_script(code_dir, ECHO_SCRIPT)

    done = submit(env, code_dir, "--param", "lr=0.1", "--param", "lr=0.2")

    assert done.returncode == 2
    assert "--param 'lr' is given twice" in done.stderr


def test_arguments_after_a_double_dash_reach_the_script(
    env: dict[str, str], code_dir: Path
) -> None:
    write_script(code_dir, ECHO_SCRIPT)

    done = submit(env, code_dir, "--json", "--", "--epochs", "3", "--json")

    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["spec"]["args"] == ["--epochs", "3", "--json"]
    assert 'argv: ["--epochs", "3", "--json"]' in log_of(env, job)


def test_version_and_list_limit(env: dict[str, str], code_dir: Path) -> None:
    write_script(code_dir, ECHO_SCRIPT)
    for n in range(3):
        assert submit(env, code_dir, "--key", f"k{n}", "--json").returncode == 0

    version = eph(env, "--version")
    two = eph(env, "list", "--limit", "2", "--json")

    assert version.stdout.strip() == f"ephemerid {__version__}"
    assert len(json.loads(two.stdout)) == 2


def test_an_error_with_json_is_a_json_object_on_stdout_with_the_same_exit_code(
    env: dict[str, str],
) -> None:
    build_service(Settings.from_env({}, home=Path(env["EPHEMERID_HOME"]))).close()  # an empty home
    done = eph(env, "status", "train-000000000000", "--json")

    assert done.returncode == 2
    error = json.loads(done.stdout)
    assert error["exit_code"] == 2 and "no job 'train-000000000000'" in error["error"]
    assert error["kind"] == "NotFound"


def test_the_log_of_a_rank_a_one_node_job_never_had_is_an_error(
    env: dict[str, str], code_dir: Path
) -> None:
    write_script(code_dir, ECHO_SCRIPT)
    job = json.loads(submit(env, code_dir, "--json").stdout)

    done = eph(env, "logs", job["id"], "--rank", "3")

    assert done.returncode == 2
    assert f"--rank 3: job {job['id']} ran as 1 process(es), ranks 0 to 0" in done.stderr


def test_ctrl_c_while_following_detaches_with_130_and_the_job_keeps_running(
    env: dict[str, str], code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, HOLD_SCRIPT)
    command = [str(EPH), "submit", "--code", str(code_dir), "--entrypoint", "job.py"]
    follow = subprocess.Popen(
        [*command, "--param", f"gate={gate.path}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        gate.pid()  # the script runs: the command is following it
        follow.send_signal(signal.SIGINT)
        _, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()

    assert follow.returncode == 130
    assert "detached:" in err and "eph cancel" in err
    [job] = json.loads(eph(env, "list", "--json").stdout)
    assert job["state"] == "RUNNING"
    cancelled = json.loads(eph(env, "cancel", job["id"], "--json").stdout)
    assert cancelled["compute_state"] == "released"

"""`eph outputs JOB [--download DIR]`: a job's outputs listed, and copied with their paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drive import write_script

EPH = Path(sys.executable).with_name("eph")
WRITER = """
import os, pathlib
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "model").mkdir()
(out / "model" / "weights.bin").write_bytes(b"w" * 1000)
(out / "metrics.json").write_text('{"accuracy": 0.9}')
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One home for the module: its job is run once, and each test only reads it."""
    home = tmp_path_factory.mktemp("outputs") / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")}
    return {**env, "EPHEMERID_HOME": str(home), "NO_COLOR": "1"}


def eph(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EPH), *args], capture_output=True, text=True, env=env, timeout=90)


@pytest.fixture(scope="module")
def job(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    code_dir = tmp_path_factory.mktemp("code")
    write_script(code_dir, WRITER)
    done = eph(env, "submit", "--code", str(code_dir), "--entrypoint", "job.py", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_outputs_lists_each_file_with_its_size(env: dict[str, str], job: dict[str, Any]) -> None:
    listed = eph(env, "outputs", job["id"], "--json")
    shown = eph(env, "outputs", job["id"])

    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert [(o["name"], o["size"]) for o in found["outputs"]] == [
        ("metrics.json", 17),
        ("model/weights.bin", 1000),
    ]
    assert found["job"] == job["id"] and found["downloaded_to"] is None
    rows = [line.split() for line in shown.stderr.splitlines()]
    assert ["model/weights.bin", "1000"] in rows and ["metrics.json", "17"] in rows


def test_download_keeps_the_relative_paths(
    env: dict[str, str], job: dict[str, Any], tmp_path: Path
) -> None:
    into = tmp_path / "fetched"

    done = eph(env, "outputs", job["id"], "--download", str(into), "--json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["downloaded_to"] == str(into)
    assert (into / "model" / "weights.bin").read_bytes() == b"w" * 1000
    assert (into / "metrics.json").read_text() == '{"accuracy": 0.9}'
    assert sorted(p.name for p in into.rglob("*")) == ["metrics.json", "model", "weights.bin"]


def test_a_download_that_would_write_outside_its_folder_is_refused_and_writes_nothing(
    env: dict[str, str], job: dict[str, Any], tmp_path: Path
) -> None:
    into, elsewhere = tmp_path / "fetched", tmp_path / "elsewhere"
    into.mkdir()
    elsewhere.mkdir()
    (into / "model").symlink_to(elsewhere)  # model/weights.bin would land in elsewhere/

    done = eph(env, "outputs", job["id"], "--download", str(into))

    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "output 'model/weights.bin' would be written to" in said and "outside" in said
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in into.iterdir()) == ["model"]


def test_outputs_of_an_unknown_job_is_an_error_naming_it(
    env: dict[str, str], job: dict[str, Any]
) -> None:
    done = eph(env, "outputs", "train-000000000000", "--json")

    assert done.returncode == 2
    assert "no job 'train-000000000000'" in json.loads(done.stdout)["error"]

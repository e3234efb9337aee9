"""`--gpus` on local compute: refused beyond the GPUs found, or run on the CPU when allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drive import write_script

EPH = Path(sys.executable).with_name("eph")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = str(tmp_path / "home")
    return {**os.environ, "EPHEMERID_HOME": home, "EPHEMERID_LOCAL_GPUS": "0", "NO_COLOR": "1"}


def eph(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EPH), *args], capture_output=True, text=True, env=env, timeout=90)


def test_more_gpus_than_found_are_refused_with_the_count_and_nothing_is_stored(
    env: dict[str, str], code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "print('never runs')\n")

    done = eph(env, "submit", "--code", str(code_dir), "--entrypoint", "job.py", "--gpus", "8")

    assert done.returncode == 2
    said = " ".join(done.stderr.split())
    assert "compute.gpus: 8 GPU(s) asked, but local compute found 0 (EPHEMERID_LOCAL_GPUS)" in said
    assert "compute.cpu_fallback: true" in said
    assert not (tmp_path / "home" / "bucket" / "runs").exists()


def test_with_cpu_fallback_the_job_runs_on_the_cpu_and_status_says_so(
    env: dict[str, str], code_dir: Path
) -> None:
    write_script(code_dir, "import os\nprint('seen:', repr(os.environ['CUDA_VISIBLE_DEVICES']))\n")
    spec = code_dir / "job.yaml"
    spec.write_text(
        "kind: train\ncode: .\nentrypoint: job.py\ncompute: {gpus: 2, cpu_fallback: true}\n"
    )

    done = eph(env, "submit", str(spec), "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    shown = eph(env, "status", job["id"])
    log = json.loads(eph(env, "logs", job["id"], "--json").stdout)["log"]

    assert job["state"] == "SUCCEEDED"
    assert job["sku"] == "cpu (fallback: 2 GPU(s) asked, 0 found)"
    assert "compute               cpu (fallback: 2 GPU(s) asked, 0 found)" in shown.stderr
    assert "seen: ''" in log

"""The demo, end to end: the real PyTorch examples train, register, promote and score."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ephemerid import names
from ephemerid.app import build_service
from ephemerid.artifacts import get_bytes
from ephemerid.cli.demo import run_demo
from ephemerid.record import ComputeState, JobState
from ephemerid.settings import Settings
from ephemerid.spec import JobKind

EPH = Path(sys.executable).with_name("eph")
pytestmark = pytest.mark.slow


def test_demo_trains_registers_and_scores_and_leaves_no_compute(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    out = io.StringIO()

    ok = run_demo(home, Console(file=out, width=200), as_json=False)

    assert ok, out.getvalue()
    service = build_service(Settings.from_env({}, home=home))
    try:
        jobs = {job.spec.kind: job for job in service.store.list()}
        assert len(jobs) == 2
        train, predict = jobs[JobKind.TRAIN], jobs[JobKind.PREDICT]
        assert train.state is JobState.SUCCEEDED, train.reason
        assert predict.state is JobState.SUCCEEDED, predict.reason
        assert all(j.compute_state is ComputeState.RELEASED for j in (train, predict))
        assert train.model_version == "tabular:1"
        assert predict.model_version == "tabular:1"
        assert [v.version for v in service.models.versions("tabular")] == [1]
        assert service.models.aliases("tabular") == {"production": 1}
        assert train.metrics, "training logged no metrics"

        key = f"{names.run_key(predict.id, names.OUTPUTS_DIR)}/predictions.csv"
        rows = list(csv.reader(get_bytes(service.artifacts, key).decode().splitlines()))
        assert rows[0] == ["id", "prediction", "probability"]
        assert len(rows) == 1 + 5000
        assert all(0.0 <= float(row[2]) <= 1.0 for row in rows[1:])

        assert [h for b in service.backends.values() for h in b.list_owned()] == []
    finally:
        service.close()
    assert "live compute: 0" in out.getvalue()


def test_eph_demo_json_works_in_the_home_so_eph_list_then_finds_its_jobs(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "EPHEMERID_HOME": str(tmp_path / "home")}

    done = subprocess.run(
        [str(EPH), "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["live_compute"] == 0
    assert report["home"] == str(tmp_path / "home")
    assert report["bucket"] == f"file://{tmp_path / 'home' / 'bucket'}"
    assert [j["state"] for j in report["jobs"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert [j["compute_state"] for j in report["jobs"]] == ["released", "released"]
    assert set(report["outputs"]) == {j["id"] for j in report["jobs"]}
    listed = subprocess.run(  # the same environment, no --home: the demo's jobs are there
        [str(EPH), "list", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert {j["id"] for j in json.loads(listed.stdout)} == {j["id"] for j in report["jobs"]}

"""The demo, end to end: the real PyTorch examples train, register, promote and score."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batching import check_demo_scoring
from ephemerid.app import build_service
from ephemerid.record import ComputeState, JobState
from ephemerid.settings import Settings
from ephemerid.spec import JobKind

EPH = Path(sys.executable).with_name("eph")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, str]]:
    """`eph demo --json` run once for the module, in the home EPHEMERID_HOME names: its report
    and its environment. The tests read what it left (the text report: test_demo_azurite)."""
    cwd = tmp_path_factory.mktemp("e2e")
    env = {**os.environ, "COLUMNS": "200", "EPHEMERID_HOME": str(cwd / "home")}
    done = subprocess.run(
        [str(EPH), "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), env


def test_demo_trains_registers_and_scores_and_leaves_no_compute(
    demo: tuple[dict[str, Any], dict[str, str]],
) -> None:
    report, env = demo

    assert report["ok"] is True, report
    service = build_service(Settings.from_env({}, home=Path(env["EPHEMERID_HOME"])))
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

        check_demo_scoring(service.artifacts, predict)

        assert [h for b in service.backends.values() for h in b.list_owned()] == []
    finally:
        service.close()


def test_eph_demo_json_works_in_the_home_so_eph_list_then_finds_its_jobs(
    demo: tuple[dict[str, Any], dict[str, str]],
) -> None:
    report, env = demo
    home = Path(env["EPHEMERID_HOME"])

    assert report["ok"] is True
    assert report["live_compute"] == 0
    assert report["home"] == str(home)
    assert report["bucket"] == f"file://{home / 'bucket'}"
    assert [j["state"] for j in report["jobs"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert [j["compute_state"] for j in report["jobs"]] == ["released", "released"]
    assert set(report["outputs"]) == {j["id"] for j in report["jobs"]}
    listed = subprocess.run(  # the same environment, no --home: the demo's jobs are there
        [str(EPH), "list", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert {j["id"] for j in json.loads(listed.stdout)} == {j["id"] for j in report["jobs"]}

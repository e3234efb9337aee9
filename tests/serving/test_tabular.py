"""The tabular example trained for real, then served from the code its training job ran with."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import httpx
import pytest

from conftest import EXAMPLES
from drive import run, upload
from ephemerid.record import JobState
from ephemerid.service import Service
from ephemerid.serving.server import PredictionService, Running
from ephemerid.serving.settings import ServingSettings
from ephemerid.spec import JobSpec
from serving.serving import KEY, KEYS

pytestmark = pytest.mark.slow
FEATURES = [f"f{j}" for j in range(4)]


def _csv(rows: int) -> bytes:
    rng = random.Random(3)
    lines = [",".join([*FEATURES, "label"])]
    for _ in range(rows):
        values = [rng.gauss(0, 1) for _ in FEATURES]
        lines.append(",".join([*(f"{v:.4f}" for v in values), str(int(values[0] > 0))]))
    return ("\n".join(lines) + "\n").encode()


def test_a_trained_model_is_served_from_its_training_jobs_code_snapshot(
    service: Service, tmp_path: Path
) -> None:
    code = tmp_path / "tabular"
    shutil.copytree(EXAMPLES / "tabular", code, ignore=shutil.ignore_patterns("__pycache__"))
    data = upload(service.artifacts, "incoming/train/train.csv", _csv(200))
    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "code": str(code),
            "entrypoint": "train.py",
            "params": {"epochs": 1, "hidden": 8},
            "inputs": {"data": data},
            "register_as": {"name": "tabular", "alias": "production"},
        }
    )
    job = run(service, spec, timeout=110)
    assert job.state is JobState.SUCCEEDED, job.reason
    shutil.rmtree(code)  # the service takes the snapshot in the bucket, not this folder
    serving = ServingSettings.from_env({}, model="tabular@production", keys=KEYS, port=0)

    with Running(PredictionService(serving, service.settings)) as running:
        url = f"{running.url}/v1/models/tabular"
        headers = {"x-ephemerid-key": KEY}
        rows = [dict.fromkeys(FEATURES, 0.5), dict.fromkeys(FEATURES, -0.5)]
        answer = httpx.post(f"{url}:predict", json={"rows": rows}, headers=headers, timeout=60)
        lacking = httpx.post(
            f"{url}:predict", json={"rows": [{"f0": 1.0}]}, headers=headers, timeout=60
        )
        described = httpx.get(url, headers=headers, timeout=60).json()

    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 1
    scored = answer.json()["rows"]
    assert len(scored) == 2 and all(set(r) == {"prediction", "probability"} for r in scored)
    assert lacking.status_code == 400 and "missing field(s) f1, f2, f3" in lacking.json()["error"]
    assert [f["name"] for f in described["input_schema"]] == FEATURES

"""A model trained in a built environment is served by a worker running that environment's
Python: one without pyarrow says so."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from drive import run
from ephemerid.record import JobState
from ephemerid.service import Service
from ephemerid.serving.server import PredictionService, Running
from ephemerid.serving.settings import ServingSettings
from ephemerid.spec import JobSpec
from serving.serving import KEYS
from wheels import local_requirements, make_wheel

PACKAGE = "ephtestpkg"  # in the job's environment only, never in this interpreter
TRAIN = """
import os, pathlib
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "model"
out.mkdir(parents=True, exist_ok=True)
(out / "weights.txt").write_text("1")
"""
PREDICT = f"""
import {PACKAGE}

def load(model_dir):
    return None

def predict(model, batch):
    return {{"value": [{PACKAGE}.VALUE] * batch.num_rows}}
"""


def test_the_worker_runs_in_the_training_jobs_environment(service: Service, code_dir: Path) -> None:
    make_wheel(code_dir / "wheels", PACKAGE, "1.0", "VALUE = 42\n")
    local_requirements(code_dir, f"{PACKAGE}==1.0")
    (code_dir / "train.py").write_text(textwrap.dedent(TRAIN))
    (code_dir / "predict.py").write_text(textwrap.dedent(PREDICT))
    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "code": str(code_dir),
            "entrypoint": "train.py",
            # inherit: the worker also needs pyarrow, which this machine's Python has
            "environment": {"requirements": "requirements.txt", "inherit": True},
            "register_as": {"name": "envmodel", "alias": "production"},
        }
    )
    job = run(service, spec, timeout=110)
    assert job.state is JobState.SUCCEEDED, job.reason
    serving = ServingSettings.from_env({}, model="envmodel@production", keys=KEYS, port=0)

    with pytest.raises(RuntimeError) as caught:
        Running(PredictionService(serving, service.settings))

    # the environment's Python has the package but not pyarrow (this one has pyarrow, not it)
    assert "needs pyarrow in the model's environment" in str(caught.value)
    assert "No module named 'pyarrow'" in str(caught.value)

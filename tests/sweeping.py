"""Helpers for sweep tests: a sweep's spec, driving it as the reaper would, overlap of rentals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ephemerid.reaper import reap
from ephemerid.record import JobRecord
from ephemerid.service import Service
from ephemerid.sweeps import validate_sweep
from ephemerid.testing.settle import settle

# A real, small training run: linear regression by gradient descent on synthetic data. Its
# val_loss falls with each epoch at a good learning rate; it writes the fitted weights as model/.
TRAIN = """
import json, os, pathlib, random
from ephemerid import track

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
lr, epochs = float(params["lr"]), int(params.get("epochs", 3))
if params.get("fail"):
    raise SystemExit(f"this trial fails on purpose: fail={params['fail']}")
rng = random.Random(7)
data = [(x, 3.0 * x + 1.0 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(200))]
train, val = data[:150], data[150:]
w = b = 0.0
for epoch in range(epochs):
    for x, y in train:
        error = w * x + b - y
        w, b = w - lr * error * x, b - lr * error
    val_loss = sum((w * x + b - y) ** 2 for x, y in val) / len(val)
    track.log_metric(params.get("metric_name", "val_loss"), val_loss, step=epoch)
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "model"
out.mkdir(parents=True)
(out / "weights.json").write_text(json.dumps({"w": w, "b": b}))
print(f"lr={lr} epochs={epochs} val_loss={val_loss:.5f}")
"""


def sweep_data(code: Path, search: dict[str, Any], **fields: Any) -> dict[str, Any]:
    trial = {"code": str(code), "entrypoint": "train.py", **fields.pop("trial", {})}
    return {"kind": "sweep", "name": "lin", "trial": trial, "search": search, **fields}


def drive(service: Service, sweep_id: str, timeout: float = 180.0) -> JobRecord:
    """Move the sweep on as the reaper's passes would, until it and its trials are settled."""
    settle(service, [sweep_id], timeout=timeout, on_tick=lambda: reap(service))
    settle(service, [t.id for t in service.sweep_trials(sweep_id)], timeout=timeout)
    return service.get(sweep_id)


def run_sweep(service: Service, data: dict[str, Any], timeout: float = 180.0) -> JobRecord:
    submitted = service.submit(validate_sweep(data), key=f"test-{data.get('name')}")
    return drive(service, submitted.job.id, timeout)


def overlap(jobs: list[JobRecord]) -> int:
    """The most jobs that held compute at one moment."""
    edges = []
    for job in jobs:
        assert job.compute_requested_at is not None and job.released_at is not None
        edges += [(job.compute_requested_at, 1), (job.released_at, -1)]
    most = held = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        held += step
        most = max(most, held)
    return most


def drive_parent(service: Service, parent_id: str, timeout: float = 180.0) -> JobRecord:
    """Move a job that makes others (a sweep, a batch job over shards) on as the reaper's passes
    would, until it and its children are settled."""
    settle(service, [parent_id], timeout=timeout, on_tick=lambda: reap(service))
    children = [j.id for j in service.list() if j.parent == parent_id]
    settle(service, children, timeout=timeout)
    return service.get(parent_id)

"""Helpers for batch prediction tests: a registered model, inputs in each format, a predict job
under the harness, and its shards read back."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from drive import upload, write_script
from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.batch.manifest import MANIFEST_FILE, Manifest, predictions_key
from ephemerid.models import ModelRegistry
from ephemerid.record import JobRecord
from ephemerid.service import Service
from ephemerid.spec import JobSpec

DEMO_SCORE_KEY = "incoming/score/customers.parquet"  # what `eph demo` drops to be scored

# doubles x and adds the model's offset (read from its file by load)
MODEL = """
import pathlib
import pyarrow as pa
import pyarrow.compute as pc

def load(model_dir):
    return float((pathlib.Path(model_dir) / "offset.txt").read_text())

def predict(model, batch):
    return {"prediction": pc.add(pc.multiply(batch["x"], 2), model)}
"""


def register_model(service: Service, offset: float = 0.5) -> str:
    """Version 1 of model ``doubler`` (its file holds ``offset``), as a train job leaves it."""
    put_bytes(service.artifacts, "runs/train-1/outputs/model/offset.txt", str(offset).encode())
    registry = ModelRegistry(service.artifacts)
    registry.register("doubler", "runs/train-1/outputs/model", job_id="train-1", metrics={})
    return "doubler:1"


def table(rows: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + rows))
    return pa.table({"id": ids, "x": [float(i) for i in ids], "tag": [f"t{i}" for i in ids]})


def encoded(data: pa.Table, fmt: str) -> bytes:
    sink = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(data, sink, row_group_size=max(1, data.num_rows // 3))
    elif fmt == "csv":
        pacsv.write_csv(data, sink)
    else:
        sink.write(b"".join(json.dumps(r).encode() + b"\n" for r in data.to_pylist()))
    return sink.getvalue()


def put_input(service: Service, key: str, data: pa.Table | bytes, fmt: str = "") -> str:
    raw = data if isinstance(data, bytes) else encoded(data, fmt)
    return upload(service.artifacts, key, raw)


def predict_spec(
    code_dir: Path, inputs: dict[str, str], body: str = MODEL, **fields: Any
) -> JobSpec:
    write_script(code_dir, body, "score.py")
    return JobSpec.model_validate(
        {
            "kind": "predict",
            "code": str(code_dir),
            "entrypoint": "score.py",
            "model": "doubler:1",
            "inputs": inputs,
            **fields,
        }
    )


def manifest_of(service: Service, job: JobRecord) -> Manifest:
    key = predictions_key(job.id, MANIFEST_FILE)
    return Manifest.loads(get_bytes(service.artifacts, key), key)


def shard_table(service: Service, key: str) -> pa.Table:
    data = get_bytes(service.artifacts, key)
    if key.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data))
    if key.endswith(".csv"):
        return pacsv.read_csv(io.BytesIO(data))
    rows = [json.loads(line) for line in data.decode().splitlines()]
    return pa.Table.from_pylist(rows)


def predictions(service: Service, job: JobRecord) -> pa.Table:
    """Every shard of the job, in order, as one table."""
    shards = manifest_of(service, job).shards
    return pa.concat_tables([shard_table(service, s.key) for s in shards])


def check_demo_scoring(artifacts: ArtifactStore, job: JobRecord) -> None:
    """The demo's scoring job ran under the harness: a complete manifest, Parquet shards, one
    prediction per input row, and each input row's id carried to its prediction."""
    assert job.spec.batch is not None and job.spec.batch.keep == ["id"]
    key = predictions_key(job.id, MANIFEST_FILE)
    manifest = Manifest.loads(get_bytes(artifacts, key), key)
    source = pq.read_table(io.BytesIO(get_bytes(artifacts, DEMO_SCORE_KEY)))
    assert manifest.complete and manifest.output_format == "parquet"
    assert manifest.rows == source.num_rows == 5000
    assert [i.key for s in manifest.shards for i in s.inputs] == [DEMO_SCORE_KEY]
    shards = [pq.read_table(io.BytesIO(get_bytes(artifacts, s.key))) for s in manifest.shards]
    scored = pa.concat_tables(shards)
    assert scored.column_names == ["id", "prediction", "probability"]
    assert scored["id"].to_pylist() == source["id"].to_pylist()
    assert set(scored["prediction"].to_pylist()) <= {0, 1, 2}
    assert all(0.0 <= p <= 1.0 for p in scored["probability"].to_pylist())

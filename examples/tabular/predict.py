"""Score rows with a model written by train.py: the batch harness's `load`/`predict` pair.

A predict job with this file as its entrypoint runs under ephemerid's batch harness
(docs/batch.md): the harness reads the inputs from the bucket (Parquet, CSV or JSON Lines),
calls `load` once and `predict` for each batch of rows, and writes the predictions back as
shards with a manifest. The model-dependent pre- and post-processing (the features in the
training order, their normalization, softmax and argmax) live here, so the same pair can serve
real-time requests too.

    python predict.py MODEL_DIR INPUT OUTPUT.parquet   # score one file in this process
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import tabular
import torch
from torch import nn

ROWS_PER_CALL = 65536  # the harness's default batch; the in-process main() uses it too


@dataclass
class Model:
    """The trained network with its input normalization, on one device."""

    network: nn.Module
    features: list[str]
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device


def load(model_dir: Path) -> Model:
    """The model version's `model.pt` and `model.json`, on CUDA when present, else the CPU."""
    model_dir = Path(model_dir)
    if missing := [f for f in ("model.pt", "model.json") if not (model_dir / f).is_file()]:
        raise tabular.DataError(f"model dir {model_dir} lacks {' and '.join(missing)}")
    device = tabular.select_device()
    if device.type == "cpu" and os.environ.get("EPHEMERID_JOB_ID"):
        # in a batch job the harness reads and writes the data on the same CPUs: one core left
        # to it keeps PyTorch's threads from waiting on each other (BENCHMARKS.md, benchmark 4)
        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1) - 1)))
    try:
        meta = json.loads((model_dir / "model.json").read_text())
        state = torch.load(model_dir / "model.pt", map_location=device, weights_only=True)
        features: list[str] = meta["features"]
        network = tabular.build_model(len(features), meta["hidden"], meta["classes"])
        network.load_state_dict(state)
        mean = torch.tensor(meta["mean"], device=device)
        std = torch.tensor(meta["std"], device=device)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        raise tabular.DataError(
            f"cannot load model from {model_dir}: {type(e).__name__}: {e}"
        ) from None
    return Model(network.to(device).eval(), features, mean, std, device)


def predict(model: Model, batch: pa.Table) -> dict[str, pa.Array]:
    """`prediction` (the class) and `probability` (its softmax) for each row of `batch`."""
    if missing := [c for c in model.features if c not in batch.column_names]:
        raise tabular.DataError(f"the batch lacks feature column(s) {', '.join(missing)}")
    x = np.column_stack(
        [batch.column(c).to_numpy().astype(np.float32, copy=False) for c in model.features]
    )
    with torch.inference_mode():
        logits = model.network((torch.from_numpy(x).to(model.device) - model.mean) / model.std)
        prob, pred = logits.softmax(1).max(1)
    return {
        "prediction": pa.array(pred.cpu().numpy()),
        "probability": pa.array(prob.cpu().numpy()),
    }


def score_file(model: Model, source: Path, out: Path) -> int:
    """Score one file in this process (no job, no harness): for trying the model by hand."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = pq.read_table(source) if source.suffix in (".parquet", ".pq") else pacsv.read_csv(source)
    keep = [c for c in data.column_names if c not in model.features]
    parts = []
    for start in range(0, data.num_rows, ROWS_PER_CALL):
        chunk = data.slice(start, ROWS_PER_CALL)
        scored = predict(model, chunk.select(model.features))
        parts.append(pa.table({**{c: chunk[c] for c in keep}, **scored}))
    pq.write_table(pa.concat_tables(parts), out)
    return data.num_rows


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    model_dir, source, out = map(Path, argv)

    def run() -> int:
        rows = score_file(load(model_dir), source, out)
        print(f"scored {rows} rows from {source}: wrote {out}")
        return 0

    return tabular.exit_code(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

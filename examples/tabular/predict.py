"""Score CSV files with a model written by train.py, streaming in chunks (see README.md).

Reads EPHEMERID_PARAMS, EPHEMERID_MODEL_DIR, EPHEMERID_INPUT_DIR and EPHEMERID_OUTPUT_DIR;
writes predictions.csv (id,prediction,probability) to the output dir.
Exit codes: 0 done, 2 bad input, params or model.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import sys
import time
from array import array
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import tabular
import torch

from ephemerid import track

DEFAULTS: dict[str, Any] = {"chunk_rows": 65536}


def read_header(path: Path) -> list[str]:
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


class Scorer:
    """The trained model with its input normalization, on one device."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        if missing := [f for f in ("model.pt", "model.json") if not (model_dir / f).is_file()]:
            raise tabular.DataError(f"model dir {model_dir} lacks {' and '.join(missing)}")
        try:
            meta = json.loads((model_dir / "model.json").read_text())
            state = torch.load(model_dir / "model.pt", map_location=device, weights_only=True)
            self.features: list[str] = meta["features"]
            self.model = tabular.build_model(len(self.features), meta["hidden"], meta["classes"])
            self.model.load_state_dict(state)
            self.mean = torch.tensor(meta["mean"], device=device)
            self.std = torch.tensor(meta["std"], device=device)
        except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
            raise tabular.DataError(
                f"cannot load model from {model_dir}: {type(e).__name__}: {e}"
            ) from None
        self.model.to(device).eval()
        self.device = device

    def __call__(self, x: torch.Tensor) -> tuple[list[int], list[float]]:
        """Predicted class and its probability for each row of raw features `x`."""
        with torch.inference_mode():
            logits = self.model((x.to(self.device) - self.mean) / self.std)
            prob, pred = logits.softmax(1).max(1)
        return pred.tolist(), prob.tolist()


def to_tensor(path: Path, chunk: list[list[str]], cols: list[int]) -> torch.Tensor:
    try:
        values = array("f", [float(row[i]) for row in chunk for i in cols])
    except (ValueError, IndexError) as e:
        raise tabular.DataError(f"{path}: bad row: {e}") from None
    return torch.frombuffer(values, dtype=torch.float32).view(len(chunk), len(cols))


def score_file(path: Path, scorer: Scorer, out: TextIO, first_row: int, chunk_rows: int) -> int:
    """Append predictions for one file to `out`; returns the row number after its last row."""
    writer = csv.writer(out)
    row = first_row
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        cols = tabular.column_indices(path, header, scorer.features)
        id_col = header.index(tabular.ID) if tabular.ID in header else None
        while chunk := list(islice(reader, chunk_rows)):
            pred, prob = scorer(to_tensor(path, chunk, cols))
            ids = range(row, row + len(chunk)) if id_col is None else [r[id_col] for r in chunk]
            writer.writerows(zip(ids, pred, [f"{p:.6f}" for p in prob], strict=True))
            row += len(chunk)
    return row


def run() -> int:
    params = tabular.load_params(DEFAULTS)
    model_dir = Path(os.environ.get("EPHEMERID_MODEL_DIR", "output/model"))
    input_dir = Path(os.environ.get("EPHEMERID_INPUT_DIR", "input"))
    output_dir = Path(os.environ.get("EPHEMERID_OUTPUT_DIR", "output"))
    if params["chunk_rows"] < 1:
        raise tabular.DataError("chunk_rows must be at least 1")

    device = tabular.select_device()
    scorer = Scorer(model_dir, device)
    files = tabular.csv_files(input_dir)
    for path in files:  # check every header before writing anything
        tabular.column_indices(path, read_header(path), scorer.features)

    start = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    out_path = output_dir / "predictions.csv"
    partial = out_path.with_name(out_path.name + ".partial")  # renamed once complete
    rows = 0
    with partial.open("w", newline="") as out:
        csv.writer(out).writerow(["id", "prediction", "probability"])
        for path in files:
            rows = score_file(path, scorer, out, rows, params["chunk_rows"])
    os.replace(partial, out_path)
    elapsed = time.perf_counter() - start
    rate = rows / elapsed if elapsed > 0 else 0.0
    track.log_metric("rows", rows)
    track.log_metric("rows_per_second", rate)
    print(f"scored {rows} rows from {len(files)} file(s) in {elapsed:.2f}s ({rate:,.0f} rows/s)")
    print(f"wrote {out_path}", flush=True)
    return 0


def main() -> int:
    return tabular.exit_code(run)


if __name__ == "__main__":
    sys.exit(main())

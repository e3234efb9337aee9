"""Train a small MLP classifier on CSV files, with checkpoint/resume (see README.md).

Reads EPHEMERID_PARAMS, EPHEMERID_INPUT_DIR, EPHEMERID_OUTPUT_DIR and
EPHEMERID_CHECKPOINT_DIR; writes model/model.pt and model/model.json to the output dir.
Exit codes: 0 done, 2 bad input or params, 143 stopped by SIGTERM (checkpoint saved).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tabular
import torch
from torch import nn
from torch.nn import functional as F

from ephemerid import track

DEFAULTS: dict[str, Any] = {
    "epochs": 8,
    "lr": 0.01,
    "hidden": 64,
    "batch_size": 256,
    "seed": 0,
    "val_fraction": 0.2,
}
LABEL = "label"
STOP = threading.Event()  # set by SIGTERM in fit(): save a checkpoint after this batch and exit


@dataclass
class Progress:
    epoch: int = 0  # 0-based epoch in progress
    batch: int = 0  # batches of that epoch already done
    loss_sum: float = 0.0  # summed per-sample loss over those batches


Split = tuple[torch.Tensor, torch.Tensor]


def read_file(
    path: Path, features: list[str] | None
) -> tuple[list[str], list[list[float]], list[int]]:
    """Rows of one CSV file; `features` defaults to every column but `label` and `id`."""
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if LABEL not in header:
            raise tabular.DataError(f"{path}: no '{LABEL}' column (header: {','.join(header)})")
        features = features or [c for c in header if c not in (LABEL, tabular.ID)]
        cols, y = tabular.column_indices(path, header, features), header.index(LABEL)
        xs: list[list[float]] = []
        ys: list[int] = []
        try:
            for row in reader:
                xs.append([float(row[i]) for i in cols])
                ys.append(int(row[y]))
        except (ValueError, IndexError) as e:
            raise tabular.DataError(f"{path}:{reader.line_num}: {e}") from None
    return features, xs, ys


def read_table(files: list[Path]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    features: list[str] | None = None
    xs: list[list[float]] = []
    ys: list[int] = []
    for path in files:
        features, file_xs, file_ys = read_file(path, features)
        xs += file_xs
        ys += file_ys
    if not features or not ys or min(ys) < 0:
        raise tabular.DataError("need at least one feature column, one row, and labels 0..K-1")
    return features, torch.tensor(xs), torch.tensor(ys)


def split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int) -> tuple[Split, Split]:
    if not 0 < val_fraction < 1 or len(y) < 2:
        raise tabular.DataError("need 0 < val_fraction < 1 and at least 2 rows")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(len(y) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def save_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, progress: Progress
) -> None:
    tmp = path.with_suffix(".tmp")  # write then rename: a kill mid-save keeps the old file
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), **asdict(progress)}, tmp
    )
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> Progress:
    if not path.exists():
        return Progress()
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    model.load_state_dict(state.pop("model"))
    opt.load_state_dict(state.pop("optimizer"))
    progress = Progress(**state)
    where = f", batch {progress.batch}" if progress.batch else ""
    print(f"resuming from epoch {progress.epoch + 1}{where}", flush=True)
    return progress


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return (model(x).argmax(1) == y).float().mean().item()


def fit(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train: Split,
    val: Split,
    params: dict[str, Any],
    checkpoint: Path,
) -> bool:
    """Train up to params["epochs"], resuming from `checkpoint`; False if stopped by SIGTERM."""
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())
    (x, y), progress = train, load_checkpoint(checkpoint, model, opt)
    for epoch in range(progress.epoch, params["epochs"]):
        # The order depends only on (seed, epoch), so a resumed epoch replays the same batches.
        order = torch.randperm(
            len(y), generator=torch.Generator().manual_seed(params["seed"] + epoch)
        )
        batches = order.to(x.device).split(params["batch_size"])
        for b, idx in enumerate(batches[progress.batch :], start=progress.batch):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            progress.loss_sum += loss.item() * len(idx)
            progress.batch = b + 1
            if STOP.is_set():
                save_checkpoint(checkpoint, model, opt, progress)
                print(f"SIGTERM: saved checkpoint at epoch {epoch + 1}, batch {b + 1}", flush=True)
                return False
        loss_avg, val_acc = progress.loss_sum / len(y), accuracy(model, *val)
        track.log_metric("loss", loss_avg, step=epoch + 1)
        track.log_metric("val_accuracy", val_acc, step=epoch + 1)
        print(
            f"epoch {epoch + 1}/{params['epochs']} loss {loss_avg:.4f} val_accuracy {val_acc:.4f}",
            flush=True,
        )
        progress = Progress(epoch + 1)
        save_checkpoint(checkpoint, model, opt, progress)
    return True


def save_model(model_dir: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, model_dir / "model.pt")
    (model_dir / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def run() -> int:
    start = time.perf_counter()
    params = tabular.load_params(DEFAULTS)
    input_dir = Path(os.environ.get("EPHEMERID_INPUT_DIR", "input"))
    output_dir = Path(os.environ.get("EPHEMERID_OUTPUT_DIR", "output"))
    checkpoint_dir = Path(os.environ.get("EPHEMERID_CHECKPOINT_DIR", "checkpoint"))

    torch.manual_seed(params["seed"])
    device = tabular.select_device()

    features, x, y = read_table(tabular.csv_files(input_dir))
    (x_train, y_train), (x_val, y_val) = split(x, y, params["val_fraction"], params["seed"])
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    train = ((x_train - mean) / std).to(device), y_train.to(device)
    val = ((x_val - mean) / std).to(device), y_val.to(device)
    classes = int(y.max()) + 1
    print(
        f"rows: {len(y_train)} train, {len(y_val)} val; {len(features)} features, {classes} classes"
    )

    model = tabular.build_model(len(features), params["hidden"], classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=params["lr"])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if not fit(model, opt, train, val, params, checkpoint_dir / "last.pt"):
        return 143

    val_acc = accuracy(model, *val)
    meta = {
        "features": features,
        "classes": classes,
        "hidden": params["hidden"],
        "mean": mean.tolist(),
        "std": std.tolist(),
        "val_accuracy": val_acc,
        "torch_version": torch.__version__,
    }
    save_model(output_dir / "model", model, meta)
    print(f"done in {time.perf_counter() - start:.2f}s: val_accuracy {val_acc:.4f}", flush=True)
    return 0


def main() -> int:
    # Until training starts there is nothing to save: SIGTERM just exits.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    return tabular.exit_code(run)


if __name__ == "__main__":
    sys.exit(main())

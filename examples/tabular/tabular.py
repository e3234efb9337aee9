"""Helpers shared by train.py and predict.py (see README.md).

The scripts run with this folder as the working directory and as sys.path[0], so they import
this file as `tabular`. build_model lives only here: training and prediction cannot disagree
about the architecture.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ephemerid import track

ID = "id"


class DataError(Exception):
    """Missing or malformed input, params or model: reported without a traceback, exit code 2."""


def exit_code(run: Callable[[], int]) -> int:
    """run()'s exit code, or 2 after printing the message of a DataError it raised."""
    try:
        return run()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def load_params(defaults: dict[str, Any]) -> dict[str, Any]:
    """Params from $EPHEMERID_PARAMS (else ./params.json if present), each logged to track."""
    params = _read_params(defaults)
    for name, value in params.items():
        track.log_param(name, value)
    return params


def _read_params(defaults: dict[str, Any]) -> dict[str, Any]:
    env = os.environ.get("EPHEMERID_PARAMS")
    path = Path(env or "params.json")
    if env is None and not path.exists():
        raw: Any = {}
    else:
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read params file {path}: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"params file {path} must hold a JSON object")
    if unknown := sorted(set(raw) - set(defaults)):
        print(f"warning: ignoring unknown params {unknown}", file=sys.stderr)
    try:
        return {k: type(v)(raw.get(k, v)) for k, v in defaults.items()}
    except (TypeError, ValueError) as e:
        raise DataError(f"bad param value in {path}: {e}") from None


def select_device() -> torch.device:
    """CUDA when available, else CPU (at most 4 threads); prints which."""
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}", flush=True)
    return device


def csv_files(input_dir: Path) -> list[Path]:
    data_dir = input_dir / "data"
    files = sorted(p for p in data_dir.rglob("*.csv") if p.is_file())
    if not files:
        raise DataError(f"no *.csv files under {data_dir}")
    return files


def column_indices(path: Path, header: list[str], names: list[str]) -> list[int]:
    if missing := [c for c in names if c not in header]:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return [header.index(c) for c in names]


def build_model(features: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )

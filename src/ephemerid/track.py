"""Tracking for user code: ``from ephemerid import track; track.log_metric("acc", 0.93, step=3)``.

Each call appends one JSON line to the run's ``metrics.jsonl`` (``EPHEMERID_METRICS_FILE``, set
by the runner), which is uploaded with the run. Outside a run the values go to stderr, so a
script works the same when run by hand.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from ephemerid.names import ENV_METRICS


def log_metric(name: str, value: float, step: int | None = None) -> None:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"metric '{name}' must be a finite number, got {value}")
    _write({"type": "metric", "name": name, "value": value, "step": step, "at": time.time()})


def log_param(name: str, value: Any) -> None:
    _write({"type": "param", "name": name, "value": value, "at": time.time()})


def _write(entry: dict[str, Any]) -> None:
    line = json.dumps(entry, default=str)
    path = os.environ.get(ENV_METRICS)
    if not path:
        print(f"[track] {line}", file=sys.stderr)
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")


def summarize(lines: list[str]) -> dict[str, float]:
    """The last value of every metric in a metrics.jsonl."""
    last: dict[str, float] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("type") == "metric":
            last[str(entry["name"])] = float(entry["value"])
    return last

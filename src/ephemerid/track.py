"""Tracking for user code: ``from ephemerid import track; track.log_metric("acc", 0.93, step=3)``.

Each call appends one JSON line to the run's ``metrics.jsonl`` (``EPHEMERID_METRICS_FILE``, set
by the runner). The runner uploads the lines to ``runs/<job>/metrics.jsonl`` as they come, with
the log, so a running job shows each metric's last value and step. Outside a run the values go to
stderr, so a script works the same when run by hand.

When ``MLFLOW_TRACKING_URI`` is set (the runner sets it, with the job's run, when ephemerid is
configured for MLflow: ``ephemerid.mlflow_run``) and mlflow imports here, each metric and param is
also logged to MLflow, in the active run. A failing MLflow call never fails the code: it says so
once on stderr, and MLflow is not tried again in this process.

The file has one writer (``Metric.line``, through ``log_metric``) and one reader (``Latest``,
``latest``, ``history``): the lines come from user code, so the reader skips any line that is
not a metric.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeGuard

from ephemerid.names import ENV_METRICS


@dataclass(frozen=True)
class Metric:
    """One value of a metric: ``step`` when the code gave one, ``at`` in seconds since 1970."""

    name: str
    value: float
    step: int | None = None
    at: float | None = None

    def line(self) -> str:
        entry = {"type": "metric", "name": self.name, "value": self.value, "step": self.step}
        return json.dumps({**entry, "at": self.at})

    @classmethod
    def parse(cls, entry: Any) -> Metric | None:
        """The metric in one decoded line, or None when the line holds none."""
        if not isinstance(entry, dict) or entry.get("type") != "metric":
            return None
        name, value, step, at = (entry.get(k) for k in ("name", "value", "step", "at"))
        if not isinstance(name, str) or not name or not _number(value):
            return None
        if step is not None and type(step) is not int:
            return None
        return cls(name, float(value), step, float(at) if _number(at) else None)

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step, "at": self.at}


def _number(value: Any) -> TypeGuard[float]:
    return type(value) in (int, float) and math.isfinite(value)


def log_metric(name: str, value: float, step: int | None = None) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a metric's name must be a non-empty string, got {name!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"metric '{name}' must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"metric '{name}' must be a finite number, got {number}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise ValueError(f"metric '{name}': step must be a whole number or None, got {step!r}")
    _write(Metric(name, number, None if step is None else int(step), time.time()).line())
    _MLFLOW.log("log_metric", name, number, step=step)


def log_param(name: str, value: Any) -> None:
    entry = {"type": "param", "name": name, "value": value, "at": time.time()}
    _write(json.dumps(entry, default=str))
    _MLFLOW.log("log_param", name, value)


class _Mlflow:
    """Metrics and params also logged to MLflow, while that works (tried once per process)."""

    def __init__(self) -> None:
        self.module: Any = None
        self.off = False

    def log(self, call: str, *args: Any, **kwargs: Any) -> None:
        if self.off or not os.environ.get("MLFLOW_TRACKING_URI"):
            return
        try:
            if self.module is None:
                import mlflow

                self.module = mlflow
            getattr(self.module, call)(*args, **kwargs)
        except ImportError:  # not in this environment: the metrics file has it all
            self.off = True
        except Exception as exc:
            self.off = True
            said = f"[track] MLflow logging is off for this run: {call} failed: {exc}"
            print(said, file=sys.stderr)


_MLFLOW = _Mlflow()


def _write(line: str) -> None:
    path = os.environ.get(ENV_METRICS)
    if not path:
        print(f"[track] {line}", file=sys.stderr)
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")


class Latest:
    """The last value of each metric in a metrics.jsonl read as it grows (``feed`` each chunk)."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}
        self._partial = b""

    def feed(self, data: bytes) -> list[Metric]:
        """Read the next bytes of the file; the metrics its complete lines hold, in order."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        found = [m for m in map(_metric_of, lines) if m is not None]
        self.metrics.update((m.name, m) for m in found)
        return found

    def values(self) -> dict[str, float]:
        return {name: metric.value for name, metric in self.metrics.items()}


def _metric_of(line: bytes | str) -> Metric | None:
    try:
        return Metric.parse(json.loads(line))
    except ValueError:  # not JSON, or not UTF-8
        return None


def latest(lines: Iterable[bytes | str]) -> dict[str, Metric]:
    """The last value (and step) of every metric in the lines of a metrics.jsonl."""
    found: dict[str, Metric] = {}
    for metric in map(_metric_of, lines):
        if metric is not None:
            found[metric.name] = metric
    return found


def history(lines: Iterable[bytes | str]) -> dict[str, list[tuple[int | None, float]]]:
    """Every value of every metric in the lines of a metrics.jsonl: (step, value), in order."""
    found: dict[str, list[tuple[int | None, float]]] = {}
    for metric in map(_metric_of, lines):
        if metric is not None:
            found.setdefault(metric.name, []).append((metric.step, metric.value))
    return found


def summarize(lines: Iterable[bytes | str]) -> dict[str, float]:
    """The last value of every metric in a metrics.jsonl."""
    return {name: metric.value for name, metric in latest(lines).items()}

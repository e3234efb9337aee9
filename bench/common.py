"""What every benchmark shares: the machine, the load, percentiles, a table and a JSON file.

Each script in ``bench/`` runs on its own (``python bench/<name>.py``) and imports this file as
``common`` (it sits next to them, so it is on ``sys.path``). Results go to
``bench/results/<name>.json``; that folder is ignored by git (numbers belong in BENCHMARKS.md,
with the machine named).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
console = Console(width=None if sys.stdout.isatty() else 120)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (if ``nvidia-smi`` lists one), Python and OS."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return ", ".join(line.strip() for line in out.splitlines() if line.strip())


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (``uptime``)."""
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest-rank on sorted values; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else 0.0,
        "min": min(values, default=0.0),
        "max": max(values, default=0.0),
    }


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or its waited-for children), in MiB (Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024


class Run:
    """One benchmark run: its settings, the load before and after, and its results."""

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.started = time.time()
        self.data: dict[str, Any] = {
            "benchmark": name,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "load_before": load(),
            "settings": settings,
        }

    def save(self, results: dict[str, Any]) -> Path:
        self.data["load_after"] = load()
        self.data["wall_s"] = round(time.time() - self.started, 2)
        self.data["results"] = results
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        console.print(
            f"[dim]{self.data['machine']['cpu']}, {self.data['machine']['cores']} cores; "
            f"load {self.data['load_before']} -> {self.data['load_after']}; "
            f"{self.data['wall_s']} s; wrote {path.relative_to(ROOT)}[/dim]"
        )
        return path


def table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], numbers: bool = True
) -> None:
    """A rich table: the first column names the row; the others are numbers, right-aligned."""
    out = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        out.add_column(column, justify="right" if i and numbers else "left")
    for row in rows:
        out.add_row(*(str(cell) for cell in row))
    console.print(out)


def verdict(met: bool) -> str:
    return "[green]met[/green]" if met else "[red]not met[/red]"


def read_result(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None

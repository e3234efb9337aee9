"""How jobs look on a terminal and in --json."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from ephemerid.record import ComputeState, JobRecord, JobState

STATE_STYLE = {
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.TIMED_OUT: "red",
    JobState.CANCELLED: "yellow",
    JobState.WAITING_FOR_CAPACITY: "yellow",
}


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def idle_s(job: JobRecord) -> float | None:
    """Compute held but neither running the user's code nor building its environment (setup):
    the idle the user paid for."""
    if job.held_s is None:
        return None
    return max(job.held_s - (job.runtime_s or 0.0) - (job.setup_s or 0.0), 0.0)


def jobs_table(
    jobs: list[JobRecord], title: str = "jobs", outputs: dict[str, str] | None = None
) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)  # fits 80 columns
    for column in ("job", "kind", "state", "runtime", "held", "idle", "compute"):
        table.add_column(column, no_wrap=True)
    if outputs:
        table.add_column("outputs")
    for job in jobs:
        state = f"[{STATE_STYLE.get(job.state, 'cyan')}]{job.state.value}[/]"
        row = [
            job.id,
            job.spec.kind.value,
            state,
            seconds(job.runtime_s),
            seconds(job.held_s),
            seconds(idle_s(job)),
            job.compute_state.value,
        ]
        if outputs:
            row.append(outputs.get(job.id, "-"))
        table.add_row(*row)
    return table


def job_detail(console: Console, job: JobRecord) -> None:
    data = job.to_json()
    style = STATE_STYLE.get(job.state, "cyan")
    console.print(f"[bold]{job.id}[/] [{style}]{job.state.value}[/] ({job.spec.kind.value})")
    for name in (
        "source",
        "backend",
        "compute_state",
        "reason",
        "model_version",
        "exit_code",
        "created_at",
        "compute_requested_at",
        "live_at",
        "started_at",
        "finished_at",
        "released_at",
    ):
        if data.get(name) not in (None, "", []):
            console.print(f"  {name:<21} {data[name]}")
    console.print(
        f"  {'runtime':<21} {seconds(job.runtime_s)}   held {seconds(job.held_s)}"
        f"   idle paid {seconds(idle_s(job))}"
    )
    if job.environment:
        console.print(f"  {'environment':<21} {job.environment}   setup {seconds(job.setup_s)}")
    if job.sku:
        console.print(f"  {'compute':<21} {job.sku} {'spot' if job.spot else 'on-demand'}")
    if job.evictions:
        console.print(f"  {'evictions':<21} {job.evictions}")
    if job.cost_usd is not None:
        held = job.compute_state in (ComputeState.REQUESTED, ComputeState.LIVE)
        console.print(f"  {'cost':<21} ${job.cost_usd:.4f}{' so far' if held else ''}")
    for name, value in sorted(job.metrics.items()):
        console.print(f"  metric {name:<14} {value:g}")
    if job.outputs:
        count = max(job.output_count, len(job.outputs))
        console.print(
            f"  outputs ({count}): {', '.join(job.outputs[:5])}" + (" ..." if count > 5 else "")
        )


def dump(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))

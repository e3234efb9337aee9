"""How jobs look on a terminal and in --json.

Every table goes through ``Listing``: one style, and its key column (a job id) is never cut:
the other columns wrap between words first, and a terminal too narrow even for that gets one
block per row. Where stderr is no terminal the CLI's console does not wrap at all
(``options.console``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from ephemerid.reads import Progress
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow

STATE_STYLE = {
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.TIMED_OUT: "red",
    JobState.CANCELLED: "yellow",
    JobState.PRUNED: "magenta",
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


@dataclass
class Listing:
    """Rows under a header, in the CLI's one table style; column ``key`` is never cut.

    The other columns wrap between words when the width is short; where even that cannot fit,
    each row becomes a block: its key on a line of its own, the rest on the lines below.
    """

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    key: int = 0

    def add_row(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Any]:
        widths = [
            max(_longest_word(cell) for cell in [column, *(row[n] for row in self.rows)])
            for n, column in enumerate(self.columns)
        ]
        widths[self.key] = max(_plain(r[self.key]).cell_len for r in [self.columns, *self.rows])
        table = Table(title=self.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        for n, column in enumerate(self.columns):
            table.add_column(column, no_wrap=n == self.key, min_width=widths[n], overflow="fold")
        for row in self.rows:
            table.add_row(*row)
        if Measurement.get(console, options.update_width(10**6), table).minimum > options.max_width:
            yield from self._blocks()
        else:
            yield table

    def _blocks(self) -> Iterator[RenderableType]:
        yield Text(self.title, style="italic")
        for row in self.rows:
            yield Text.from_markup(f"[bold]{row[self.key]}[/]", overflow="fold")
            cells = enumerate(zip(self.columns, row, strict=True))
            rest = [f"{column} {cell}" for n, (column, cell) in cells if n != self.key]
            yield Padding(Text.from_markup("  ".join(rest), overflow="fold"), (0, 0, 0, 2))


def _plain(cell: str) -> Text:
    return Text.from_markup(cell)


def _longest_word(cell: str) -> int:
    return max((len(word) for word in _plain(cell).plain.split()), default=0)


def jobs_table(
    jobs: list[JobRecord],
    title: str = "jobs",
    outputs: dict[str, str] | None = None,
    progress: Callable[[JobRecord], Progress] | None = None,
) -> Listing:
    """A row per job; with ``progress``, a running job shows its runtime and held time so far."""
    columns = ["job", "kind", "state", "runtime", "held", "idle", "compute"]
    listing = Listing(title, [*columns, "outputs"] if outputs else columns)
    now = utcnow()
    for job in jobs:
        state = f"[{STATE_STYLE.get(job.state, 'cyan')}]{job.state.value}[/]"
        runtime, held, idle = seconds(job.runtime_s), seconds(job.held_s), seconds(idle_s(job))
        if progress is not None and not job.state.terminal and job.compute_requested_at:
            ran = progress(job).elapsed_s(job)
            runtime = f"{seconds(ran)} so far" if ran is not None else "-"
            held = f"{seconds((now - job.compute_requested_at).total_seconds())} so far"
        row = [job.id, job.kind, state, runtime, held, idle, job.compute_state.value]
        if outputs:
            row.append(outputs.get(job.id, "-"))
        listing.add_row(*row)
    return listing


def job_detail(console: Console, job: JobRecord, progress: Progress | None = None) -> None:
    """The job, with what its runner reported so far (``progress``) while it runs."""
    progress = progress or Progress(job.started_at)
    data = job.to_json()
    if progress.started_at:
        data["started_at"] = progress.started_at.isoformat()
    style = STATE_STYLE.get(job.state, "cyan")
    console.print(f"[bold]{job.id}[/] [{style}]{job.state.value}[/] ({job.kind})")
    for name in (
        "source",
        "backend",
        "python",
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
    _times(console, job, progress)
    if job.environment:
        console.print(f"  {'environment':<21} {job.environment}   setup {seconds(job.setup_s)}")
    if job.sku:
        rented = "" if job.backend == "local" else f" {'spot' if job.spot else 'on-demand'}"
        console.print(f"  {'compute':<21} {job.sku}{rented}")
    if job.evictions:
        console.print(f"  {'evictions':<21} {job.evictions}")
    if job.cost_limit:  # what compute.max_cost decided at submit
        console.print(f"  {'max_cost':<21} {job.cost_limit.get('note', '')}")
    if job.cost_usd is not None:
        held = job.compute_state in (ComputeState.REQUESTED, ComputeState.LIVE)
        console.print(f"  {'cost':<21} ${job.cost_usd:.4f}{' so far' if held else ''}")
    elif job.held_s is not None and job.backend == "local":  # EPHEMERID_LOCAL_PRICE_PER_HOUR: 0
        gpus = 0 if job.sku.startswith("cpu") else job.spec.compute.gpus
        used = f"{job.held_s / 3600 * gpus:.2f} GPU-h" if gpus else f"{job.held_s / 3600:.2f} h"
        console.print(f"  {'cost':<21} {used}, no price set (EPHEMERID_LOCAL_PRICE_PER_HOUR)")
    metrics = progress.metrics  # with steps; the record's summary wins once the job has ended
    for name, value in sorted((job.metrics or {n: m.value for n, m in metrics.items()}).items()):
        shown = metrics.get(name)
        step = f" (step {shown.step})" if shown and shown.step is not None else ""
        console.print(f"  metric {name:<14} {value:g}{step}")
    if job.outputs:
        count = max(job.output_count, len(job.outputs))
        console.print(
            f"  outputs ({count}): {', '.join(job.outputs[:5])}" + (" ..." if count > 5 else "")
        )


def _times(console: Console, job: JobRecord, progress: Progress) -> None:
    """User time, compute held, and the difference: the idle paid for (so far, while held)."""
    runtime, held, idle = job.runtime_s, job.held_s, idle_s(job)
    so_far = ""
    if held is None and job.compute_requested_at and not job.released_at:  # held now
        runtime = progress.elapsed_s(job)
        held = (utcnow() - job.compute_requested_at).total_seconds()
        idle, so_far = max(held - (runtime or 0.0) - (job.setup_s or 0.0), 0.0), " so far"
    console.print(
        f"  {'runtime':<21} {seconds(runtime)}   held {seconds(held)}"
        f"   idle paid {seconds(idle)}{so_far}"
    )


def dump(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))

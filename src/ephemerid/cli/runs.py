"""`eph runs compare JOB ... [--by METRIC] [--desc] [--json]`: runs side by side."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ephemerid.cli.options import Home, Json, console, service_for
from ephemerid.cli.render import Listing, dump, seconds
from ephemerid.compare import compare, metric_names

runs_app = typer.Typer(help="Look at runs together.", no_args_is_help=True)


@runs_app.command("compare")
def compare_runs(
    job_ids: Annotated[list[str] | None, typer.Argument(help="The jobs to compare.")] = None,
    by: Annotated[str | None, typer.Option(help="Sort by this metric (ascending).")] = None,
    desc: Annotated[bool, typer.Option(help="With --by: largest first.")] = False,
    home: Home = None,
    json_: Json = False,
) -> None:
    """One row per run: state, params, each metric's final value, runtime, cost."""
    service = service_for(home)
    rows = compare(service, [service.get(job_id) for job_id in job_ids or []], by, desc)
    if json_:
        dump(rows)
    else:
        console.print(table(rows))


def table(rows: list[dict[str, Any]]) -> Listing:
    metrics = metric_names(rows)
    listing = Listing("runs", ["job", "state", "params", *metrics, "runtime", "cost"])
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        values = [f"{r['metrics'][m]:g}" if m in r["metrics"] else "-" for m in metrics]
        cost = "-" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}"
        listing.add_row(r["id"], r["state"], params, *values, seconds(r["runtime_s"]), cost)
    return listing

"""`eph cost [--since 7d] [--until T] [--by rule|sweep|owner|backend|day] [--vs-persistent SKU]
[--spot] [--json]`: what the jobs of a period cost, and what one always-on machine would have."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group
from rich.text import Text

from ephemerid.cli.options import Home, Json, console, service_for
from ephemerid.cli.render import Listing, dump
from ephemerid.costs import CostReport, Line, report_from


def cost(
    since: Annotated[
        str, typer.Option(help="From when: a duration back (30m, 12h, 7d, 2w) or a date.")
    ] = "7d",
    until: Annotated[
        str | None, typer.Option(help="Until when (default: now), in the same format.")
    ] = None,
    by: Annotated[
        str | None, typer.Option(help="Group by rule, sweep, owner, backend or day.")
    ] = None,
    vs_persistent: Annotated[
        str | None,
        typer.Option("--vs-persistent", help="Compare with one always-on machine of this SKU."),
    ] = None,
    spot: Annotated[
        bool, typer.Option(help="With --vs-persistent: price that machine at its spot rate.")
    ] = False,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Spend, GPU hours, setup and idle share of the jobs in a period; with --vs-persistent SKU,
    what one machine of that SKU kept on all the period would have cost, and the saving."""
    service = service_for(home)
    found = report_from(
        service.list(),
        since=since,
        until=until,
        by=by,
        vs_persistent=vs_persistent,
        spot=spot,
        prices=service.prices,
    )
    if json_:
        dump(found.to_json())
    else:
        console.print(render(found))


def render(found: CostReport) -> Group:
    """The report for a person: the table, the persistent machine, the assumptions."""
    title = f"cost {found.since:%Y-%m-%d %H:%M} to {found.until:%Y-%m-%d %H:%M} UTC"
    columns = [found.by or "", "jobs", "spend", "GPU-h", "held", "setup", "idle"]
    listing = Listing(title, columns)
    for group in found.groups:
        listing.add_row(*_cells(group))
    listing.add_row(*_cells(found.total))
    parts: list[Listing | Text] = [listing]
    persistent = found.persistent
    if persistent is not None:
        rate = "spot" if persistent.spot else "on demand"
        share = persistent.saving_share
        parts.append(
            Text(
                f"one {persistent.sku} always on ({rate}, ${persistent.price_per_hour}/h x "
                f"{persistent.hours:.1f} h): ${persistent.cost_usd:,.2f}; ephemerid: "
                f"{spend(found.total)}; saved ${persistent.saving_usd:,.2f}"
                + (f" ({share:.1%})" if share is not None else "")
            )
        )
    parts.extend(Text(f"assumes {line}", style="dim") for line in found.assumptions)
    return Group(*parts)


def spend(line: Line) -> str:
    """USD, or the time when nothing held had a price ("0.42 GPU-h, no price set")."""
    if line.cost_usd == 0 and line.unpriced_h > 0:
        hours = f"{line.gpu_h:.2f} GPU-h" if line.gpu_h else hours_text(line.held_h)
        return f"{hours}, no price set"
    text = f"${line.cost_usd:,.4f}"
    return text + (f" + {hours_text(line.unpriced_h)} unpriced" if line.unpriced_h > 0 else "")


def hours_text(hours: float) -> str:
    """Hours, in seconds when under a minute's hundredths would show as 0.00."""
    return f"{hours:.2f} h" if hours >= 0.01 or hours == 0 else f"{hours * 3600:.0f} s"


def _cells(line: Line) -> list[str]:
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    return [
        line.key,
        str(line.jobs),
        spend(line),
        f"{line.gpu_h:.2f}",
        hours_text(line.held_h),
        share(line.setup_share),
        share(line.idle_share),
    ]

"""`eph sweep submit FILE` and `eph sweep show SWEEP`: searches over a train job's params.

`eph submit FILE` takes a sweep file too (``kind: sweep``), and `eph status SWEEP`, `eph cancel
SWEEP` and `eph runs compare SWEEP` work on a sweep as on any job.
"""

from __future__ import annotations

import getpass
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ephemerid.agent.driver import Driver, keep_running
from ephemerid.cli.options import Home, Json, console, service_for
from ephemerid.cli.render import Listing, dump
from ephemerid.client import sweep_data
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service
from ephemerid.sweeps.spec import validate_sweep
from ephemerid.sweeps.state import view

DETACHED = 130  # Ctrl-C while following: the sweep goes on, the command stops
sweep_app = typer.Typer(help="Sweeps: many trials of one train job.", no_args_is_help=True)


def submit_sweep(
    spec_file: Path, key: str | None, home: Path | None, json_: bool, detach: bool
) -> JobRecord:
    """Submit the sweep in ``spec_file``; it runs on with no command (the home's agent). Not
    ``detach``ed: follow it, a line per trial that starts or ends, until every trial has."""
    spec = validate_sweep(sweep_data(spec_file), f"sweep file '{spec_file}'")
    service = service_for(home, create=True)
    owner = f"cli:{getpass.getuser()}"  # the machine's own user: unscoped, as admin
    submitted = service.submit(
        spec, key=key, source="cli", owner=owner, admin=True, python=sys.executable
    )
    sweep = submitted.job
    if sweep.open:
        keep_running(service, lambda m: console.print(f"[yellow]warning:[/] {m}"))
    if not json_:
        verb = "submitted" if submitted.created else "already submitted (same key)"
        console.print(f"{verb}: [bold]{sweep.id}[/] {sweep.state.value} {sweep.reason}")
    if not detach:
        sweep = _follow(service, sweep, quiet=json_)
    if json_:
        dump(view(sweep))
    elif detach:
        console.print(f"  `eph sweep show {sweep.id}` shows its trials")
    else:
        sweep_detail(console, sweep)
    return sweep


def _follow(service: Service, sweep: JobRecord, quiet: bool) -> JobRecord:
    """Until the sweep is settled: a line per trial that starts or ends. Ctrl-C detaches."""
    driver = Driver(service, lambda m: console.print(f"[yellow]warning:[/] {m}"))
    seen: dict[int, str] = {}
    try:
        while not (sweep := service.get(sweep.id)).settled:
            for trial in view(sweep)["trials"]:
                if not quiet and seen.get(trial["number"]) != trial["state"]:
                    seen[trial["number"]] = trial["state"]
                    value = "" if trial["value"] is None else f" {trial['value']:g}"
                    console.print(
                        f"  trial {trial['number']} {trial['job']} {trial['state']}{value} "
                        f"{_params(trial['params'])} {trial['reason']}"
                    )
            driver.tick(sweep.id)
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print(
            f"\ndetached: {sweep.id} keeps running; `eph sweep show {sweep.id}` shows it, "
            f"`eph cancel {sweep.id}` stops it and its trials"
        )
        raise typer.Exit(DETACHED) from None
    return sweep


@sweep_app.command("submit")
def submit(
    spec_file: Annotated[Path, typer.Argument(help="A sweep spec (YAML or JSON).")],
    key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    detach: Annotated[bool, typer.Option(help="Return at once; the trials run on.")] = False,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Submit a sweep and follow its trials (up to max_parallel at a time) to the end."""
    sweep = submit_sweep(spec_file, key, home, json_, detach)
    raise typer.Exit(exit_code(sweep))


@sweep_app.command("show")
def show(sweep_id: str, home: Home = None, json_: Json = False) -> None:
    """Trials so far, running, pruned, failed, the best so far, and each trial."""
    sweep = service_for(home).get(sweep_id)
    if sweep.sweep is None:
        message = f"{sweep_id} is a {sweep.kind} job, not a sweep"
        raise typer.BadParameter(message, param_hint="SWEEP")
    if json_:
        dump(view(sweep))
    else:
        sweep_detail(console, sweep)
    raise typer.Exit(exit_code(sweep))


def exit_code(sweep: JobRecord) -> int:
    """1 for a sweep that ended other than SUCCEEDED, else 0."""
    return 1 if sweep.state.terminal and sweep.state is not JobState.SUCCEEDED else 0


def sweep_detail(out: Console, sweep: JobRecord) -> None:
    data = view(sweep)
    counts = data["counts"]
    out.print(
        f"  {'search':<21} {data['method']}, {data['trials_made']} of {data['trials_planned']} "
        f"trials made, at most {data['max_parallel']} at once"
    )
    out.print(
        f"  {'trials':<21} {counts['running']} running, {counts['succeeded']} succeeded, "
        f"{counts['pruned']} pruned, {counts['failed']} failed"
    )
    out.print(f"  {'trials cost':<21} ${data['cost_usd']:.4f}")
    best = data["best"]
    if best:
        params = _params(best["params"])
        out.print(
            f"  {'best':<21} trial {best['number']} {best['job']} "
            f"{data['metric']}={best['value']:g} ({params})"
        )
    out.print(trials_table(data))


def trials_table(data: dict[str, Any]) -> Listing:
    metric = data["metric"] or "value"
    listing = Listing("trials", ["#", "job", "state", "params", metric, "reason"], key=1)
    for t in data["trials"]:
        value = "-" if t["value"] is None else f"{t['value']:g}"
        listing.add_row(
            str(t["number"]), t["job"] or "-", t["state"], _params(t["params"]), value, t["reason"]
        )
    return listing


def _params(params: dict[str, Any]) -> str:
    shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    return " ".join(shown)

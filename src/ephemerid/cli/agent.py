"""`eph agent` (run it here), `eph agent status`, `eph agent stop`, and `eph schedules`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from ephemerid import agent as local_agent
from ephemerid.cli.options import Home, Json, check_home, console
from ephemerid.cli.render import Listing, dump
from ephemerid.record import utcnow
from ephemerid.rules import Rules
from ephemerid.settings import Settings

agent_app = typer.Typer(
    help="The local agent: handles results, starts waiting jobs, fires schedules, reaps.",
    invoke_without_command=True,
)


@agent_app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    detach: Annotated[
        bool, typer.Option(help="Start it in the background (if none runs) and return.")
    ] = False,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Run this home's agent in the foreground until Ctrl-C (or idle: EPHEMERID_AGENT_IDLE_S)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings.from_env(home=home)
    if detach:
        info = local_agent.ensure_running(settings)
        if json_:
            dump({"running": True, **info.to_json()})
        else:
            console.print(f"agent {info.pid} drives {info.home} (log: {info.log})")
        return
    logging.getLogger("ephemerid").setLevel(logging.INFO)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("ephemerid").addHandler(handler)
    console.print(f"agent {settings.home}: Ctrl-C stops it")
    try:
        local_agent.serve(settings)
    except KeyboardInterrupt:
        console.print("stopped")


@agent_app.command("status")
def agent_status(home: Home = None, json_: Json = False) -> None:
    """Whether an agent runs for this home: pid, since when, and the jobs still open."""
    settings = Settings.from_env(home=home)
    check_home(settings)
    info = local_agent.AgentLock(settings.home).holder()
    found: dict[str, Any] = {"running": info is not None, "home": str(settings.home)}
    if info is not None:
        found.update(info.to_json())
    found["open_jobs"] = _open_jobs(settings)
    if json_:
        dump(found)
    elif info is None:
        console.print(f"no agent runs for {settings.home}; open jobs: {found['open_jobs']}")
    else:
        console.print(
            f"agent {info.pid} ({info.kind}) drives {info.home} since {info.since}; "
            f"open jobs: {found['open_jobs']}; rules: {info.rules}; log: {info.log}"
        )


@agent_app.command("stop")
def agent_stop(home: Home = None, json_: Json = False) -> None:
    """End this home's agent (its jobs run on; the next agent handles their results)."""
    settings = Settings.from_env(home=home)
    info = local_agent.stop(settings.home)
    if json_:
        dump({"stopped": info is not None, "home": str(settings.home), "pid": info and info.pid})
    elif info is None:
        console.print(f"no agent runs for {settings.home}")
    else:
        console.print(f"stopped agent {info.pid} of {settings.home}")


def schedules(home: Home = None, json_: Json = False) -> None:
    """Each schedule rule and when it fires next (UTC); the agent fires it, to the second."""
    settings = Settings.from_env(home=home)  # reads the rules file only: no home needed yet
    path = settings.rules_path
    rules = Rules.load(path) if path.exists() else None
    now = utcnow()
    times = rules.next_times(now) if rules else []
    if json_:
        dump([{"rule": r.name, "schedule": r.schedule, "next": t.isoformat()} for r, t in times])
        return
    if rules is None:
        console.print(f"no rules file at {path}: no schedules (EPHEMERID_RULES names another)")
        return
    if not times:
        console.print(f"no schedule rules in {path}")
        return
    listing = Listing(f"schedules in {path}", ("rule", "schedule", "next (UTC)", "in"))
    for rule, when in times:
        wait = (when - now).total_seconds()
        listing.add_row(rule.name, str(rule.schedule), when.isoformat(), f"{wait:.0f}s")
    console.print(listing)
    info = local_agent.AgentLock(settings.home).holder()
    if info is None:
        console.print("no agent runs for this home: `eph agent --detach` starts one to fire them")


def _open_jobs(settings: Settings) -> int:
    if not _exists(settings.home):
        return 0
    from ephemerid.app import build_service

    service = build_service(settings)
    try:
        return len(service.list_open())
    finally:
        service.close()


def _exists(home: Path) -> bool:
    return home.is_dir()

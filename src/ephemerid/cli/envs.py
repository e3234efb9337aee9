"""`eph envs`: the job environments built on this machine (under the home's ``envs/``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ephemerid.cli.options import Home, Json, console
from ephemerid.cli.render import dump
from ephemerid.envs.cache import Cached, list_environments, prune
from ephemerid.errors import BadInput
from ephemerid.settings import Settings
from ephemerid.spec import parse_duration

envs_app = typer.Typer(help="Job environments built here: list, prune.", no_args_is_help=True)


@envs_app.command("list")
def envs_list(home: Home = None, json_: Json = False) -> None:
    """Every environment built here, most recently used first."""
    found = list_environments(Settings.from_env(home=home).home / "envs")
    if json_:
        dump([c.to_json() for c in found])
        return
    table = Table(title="environments")
    for column in ("id", "state", "python", "from", "size", "last used"):
        table.add_column(column)
    for cached in found:
        table.add_row(
            cached.id,
            _state(cached),
            str(cached.details.get("python") or "-"),
            _source(cached),
            f"{cached.size_bytes / 1e6:.1f} MB",
            f"{cached.last_used:%Y-%m-%d %H:%M}" if cached.last_used else "-",
        )
    console.print(table)


@envs_app.command("prune")
def envs_prune(
    older_than: Annotated[
        str, typer.Option(help="Keep those used more recently, e.g. 7d, 12h; 0: remove all.")
    ] = "0",
    home: Home = None,
    json_: Json = False,
) -> None:
    """Remove the environments no job is using (the next job that needs one builds it again)."""
    try:
        seconds = parse_duration(older_than) if older_than.strip() != "0" else 0
    except ValueError as exc:
        raise BadInput(f"--older-than: {exc}") from exc
    done = prune(Settings.from_env(home=home).home / "envs", seconds)
    if json_:
        dump(
            {
                "removed": [c.id for c in done.removed],
                "in_use": [c.id for c in done.in_use],
                "kept": [c.id for c in done.kept],
                "freed_bytes": sum(c.size_bytes for c in done.removed),
            }
        )
        return
    freed = sum(c.size_bytes for c in done.removed) / 1e6
    console.print(f"removed {len(done.removed)} environment(s), {freed:.1f} MB")
    for cached in done.in_use:
        console.print(f"  kept {cached.id}: a job is using it")


def _state(cached: Cached) -> str:
    if cached.in_use:
        return "in use" if cached.ready else "building"
    return "ready" if cached.ready else "incomplete"


def _source(cached: Cached) -> str:
    if cached.details.get("requirements"):
        return str(cached.details["requirements"])
    packages = cached.details.get("packages") or []
    return ", ".join(packages[:3]) + (" ..." if len(packages) > 3 else "") or "-"

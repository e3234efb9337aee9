"""`eph models`: registered model versions and their aliases."""

from __future__ import annotations

from typing import Annotated

import typer

from ephemerid.cli.options import Home, Json, console, service_for
from ephemerid.cli.render import Listing, dump
from ephemerid.errors import BadInput
from ephemerid.spec import ModelRef

models_app = typer.Typer(help="Model versions and aliases.", no_args_is_help=True)


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Registered models, their versions and aliases."""
    registry = service_for(home).models
    found = []
    for model in [name] if name else registry.names():
        aliases = registry.aliases(model)
        for version in registry.versions(model):
            tags = sorted(a for a, v in aliases.items() if v == version.version)
            found.append({**version.__dict__, "aliases": tags})
    if json_:
        dump(found)
        return
    table = Listing("models", ("job", "model", "version", "aliases", "metrics", "state"))
    for item in found:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(item["metrics"].items()))
        table.add_row(
            item["job_id"],
            item["name"],
            str(item["version"]),
            ", ".join(item["aliases"]),
            metrics,
            item["state"],
        )
    console.print(table)


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="name:version, e.g. churn:3")],
    alias: Annotated[str, typer.Argument(help="e.g. production")],
    home: Home = None,
    json_: Json = False,
) -> None:
    """Point an alias at a version; predict jobs that name the alias use it from then on."""
    try:
        parsed = ModelRef.parse(ref)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    if parsed.version is None:
        raise BadInput(f"'{ref}': promote takes name:version, e.g. {parsed.name}:3")
    version = service_for(home).models.promote(parsed.name, parsed.version, alias)
    if json_:
        dump({"model": version.name, "version": version.version, "alias": alias})
    else:
        console.print(f"{version.name}@{alias} -> version {version.version}")

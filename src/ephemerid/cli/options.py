"""The options every command shares, and how a command builds its service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ephemerid.app import build_service
from ephemerid.service import Service
from ephemerid.settings import Settings

console = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]
Home = Annotated[
    Path | None, typer.Option("--home", envvar="EPHEMERID_HOME", help="Local state folder.")
]


def service_for(home: Path | None) -> Service:
    return build_service(Settings.from_env(home=home))

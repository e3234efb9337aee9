"""The options every command shares, and how a command builds its service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ephemerid.app import build_service
from ephemerid.errors import BadInput
from ephemerid.service import Service
from ephemerid.settings import Settings

_OPENED: list[Service] = []  # the services this command built, for close_services
UNWRAPPED = 10_000  # the width of a console on no terminal: a line is as long as it is


def _console() -> Console:
    """stderr; on a file or a pipe no line is folded, so ids and URLs stay whole for grep."""
    console = Console(stderr=True)
    return console if console.is_terminal else Console(stderr=True, width=UNWRAPPED)


console = _console()

Json = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]
Home = Annotated[
    Path | None, typer.Option("--home", envvar="EPHEMERID_HOME", help="Local state folder.")
]


def service_for(home: Path | None, *, create: bool = False) -> Service:
    """The service on ``home`` (--home, EPHEMERID_HOME, else ./.ephemerid).

    Only a command that makes jobs (``create``: submit) may start a new home; any other refuses
    one that holds no job store, so a mistyped --home is an error rather than a new empty store.
    """
    settings = Settings.from_env(home=home)
    if not create:
        check_home(settings)
    service = build_service(settings)
    _OPENED.append(service)
    return service


def close_services() -> None:
    """Close what this command opened (``main`` calls it as the command ends): a read leaves
    the store as it found it, with no connection (and no -wal/-shm file) left behind."""
    while _OPENED:
        _OPENED.pop().close()


def check_home(settings: Settings) -> None:
    """BadInput naming the home when its job store is local (SQLite) and was never made."""
    scheme, _, target = settings.store_url.partition("://")
    if scheme != "sqlite" or Path(target).is_file():
        return
    where = (
        f"home '{settings.home}'"
        if Path(target).parent == settings.home
        else f"job store '{settings.store_url}'"
    )
    raise BadInput(
        f"{where} does not exist (or holds no jobs.db): check --home / EPHEMERID_HOME; "
        "`eph submit` starts a new home"
    )

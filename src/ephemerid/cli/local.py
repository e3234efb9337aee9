"""`eph dev` and `eph demo`: the function app's functions and the demo, run on this machine."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ephemerid import names
from ephemerid.cli.options import Home, Json, console
from ephemerid.cli.render import Listing, dump
from ephemerid.errors import BadInput, require_extra
from ephemerid.record import JobRecord
from ephemerid.settings import Settings

if TYPE_CHECKING:
    from ephemerid.devhost import DevHost, Invocation
    from ephemerid.testing.azurite import Azurite


def dev(
    app_path: Annotated[
        Path | None,
        typer.Option(
            "--app",
            help="function_app.py or its folder (default: ./function_app.py, else "
            "ephemerid's own functions).",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1; 0 picks a free one.")] = 7071,
    storage: Annotated[
        str, typer.Option(help="local (a folder and SQLite) or azurite (Blob, Queue, Table).")
    ] = "local",
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 0.5,
    home: Home = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the wiring as JSON to stdout, then keep running.")
    ] = False,
) -> None:
    """Run the function app's functions here: the bucket, queues, a clock and HTTP feed them."""
    require_extra("azure.functions", "devhost")
    from ephemerid.devhost import DevHost

    state = Settings.from_env(home=home).home
    try:  # Ctrl-C at any moment stops it cleanly: the host and Azurite are closed on the way out
        with (
            storage_env(storage) as emulator,
            drives(state),
            DevHost(
                app_path,
                home=state,
                port=port,
                interval=interval,
                on_job=_print_job,
                on_invocation=_print_call,
            ) as host,
        ):
            _show_wiring(host, json_, emulator)
            host.run()
    except KeyboardInterrupt:
        console.print("stopped")


@contextlib.contextmanager
def drives(home: Path) -> Iterator[None]:
    """`eph dev` drives the home itself: a running agent is stopped, and the dev host holds the
    agent's lock meanwhile, so no command starts one (one driver per home)."""
    from ephemerid.agent import AgentInfo, AgentLock, stop
    from ephemerid.record import utcnow

    stopped = stop(home)
    if stopped is not None:
        console.print(f"stopped agent {stopped.pid}: the dev host drives {home} now")
    info = AgentInfo(
        pid=os.getpid(), home=str(home), since=utcnow().isoformat(timespec="seconds"), kind="dev"
    )
    with AgentLock(home).held(info):
        yield


def _print_call(call: Invocation) -> None:
    outcome = "" if call.ok else f" [red]failed: {call.error}[/]"
    console.print(f"[dim]{call.function}({call.detail}) {call.seconds:.2f}s[/]{outcome}")


def _print_job(job: JobRecord) -> None:
    console.print(f"{job.id} {job.state.value} compute={job.compute_state.value} {job.reason}")


def _show_wiring(host: DevHost, as_json: bool, emulator: Azurite | None) -> None:
    """What feeds each function, then the key and the Azurite it started, once; events follow
    as they come."""
    from ephemerid.devhost.keys import KEYS_FILE
    from ephemerid.devhost.wiring import wiring_json

    storage = azurite_details(emulator) if emulator else None
    if as_json:
        shown = {"functions": wiring_json(host.wiring), "url": host.url, "function_key": host.key}
        dump({**shown, **({"azurite": storage} if storage else {})})
        sys.stdout.flush()
    else:
        columns = ("function", "trigger", "source", "detail")
        table = Listing(f"dev host: {host.service.bucket_uri}", columns)
        for wire in host.wiring:
            table.add_row(wire.function, wire.trigger, wire.source, wire.detail)
        console.print(table)
        if host.key:
            console.print(f"function key: {host.key}  (kept in {host.home / KEYS_FILE})")
        if storage:
            _show_azurite(storage)
    console.print("job events follow; Ctrl-C stops")


def azurite_details(emulator: Azurite) -> dict[str, str]:
    """How to reach the Azurite ``eph dev`` started: its account, endpoints, connection string."""
    from ephemerid.testing.azurite import ACCOUNT

    ports = {"blob": emulator.blob_port, "queue": emulator.queue_port, "table": emulator.table_port}
    endpoints = {f"{k}_endpoint": f"http://127.0.0.1:{p}/{ACCOUNT}" for k, p in ports.items()}
    return {"account": ACCOUNT, **endpoints, "connection_string": emulator.connection_string}


def _show_azurite(storage: dict[str, str]) -> None:
    """The endpoints; the connection string (Azurite's public development key) only on ask."""
    console.print(f"azurite: account {storage['account']}")
    for kind in ("blob", "queue", "table"):
        console.print(f"  {kind:<5} {storage[f'{kind}_endpoint']}")
    console.print(
        "  connection string (with Azurite's public development key): `eph dev --storage azurite "
        "--json` prints it as azurite.connection_string; what Azurite holds lasts while this runs"
    )


def demo(
    home: Home = None,
    storage: Annotated[
        str, typer.Option(help="local (a folder and SQLite) or azurite (Blob and Table).")
    ] = "local",
    json_: Json = False,
) -> None:
    """Drop a training file, train and register a model, drop a scoring file, score it.

    It works in the home (--home, EPHEMERID_HOME, else ./.ephemerid), so `eph list` then shows
    its jobs; its copy of the examples goes in <home>/demo/.
    """
    from ephemerid.cli.demo import run_demo

    with storage_env(storage):
        ok = run_demo(Settings.from_env(home=home).home, console, json_)
    raise typer.Exit(0 if ok else 1)


@contextlib.contextmanager
def storage_env(storage: str) -> Iterator[Azurite | None]:
    """With ``azurite``: start Azurite and point the store and the bucket at it meanwhile."""
    if storage == "local":
        yield None
        return
    if storage != "azurite":
        raise BadInput(f"--storage '{storage}' is unknown: use local or azurite")
    from ephemerid.testing import azurite

    binary = azurite.find_binary()
    if binary is None:
        raise BadInput("azurite is not installed: run `npm ci` in the ephemerid checkout")
    with azurite.running(binary) as emulator:
        values = {
            "EPHEMERID_STORAGE": emulator.connection_string,
            "EPHEMERID_STORE": f"table://{names.JOBS_TABLE}",
            "EPHEMERID_ARTIFACTS": "az://",
        }
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)  # the runners this process starts inherit the connection
        try:
            yield emulator
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

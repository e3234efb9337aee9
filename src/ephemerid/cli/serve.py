"""`eph serve`: a model version behind HTTP, answering predictions now (docs/serving.md)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ephemerid import sandbox
from ephemerid.cli.options import Home, Json, check_home, console
from ephemerid.errors import BadInput, require_extra
from ephemerid.settings import Settings

KEYS_FILE = "devhost-keys.json"  # the dev host's: its keys open the service too


def serve(
    ref: Annotated[
        str, typer.Argument(help="MODEL@ALIAS or MODEL:VERSION (none with --split).")
    ] = "",
    code: Annotated[
        Path | None,
        typer.Option(help="The folder defining load/predict (default: the training job's code)."),
    ] = None,
    entrypoint: Annotated[
        str | None, typer.Option(help="The file in it (default predict.py).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="The port (default 8080); 0 picks a free one.")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="The address to listen on (default 127.0.0.1).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Versions or aliases by weight: tabular:3=90,tabular:4=10.")
    ] = None,
    pin: Annotated[
        bool, typer.Option("--pin", help="Stay on the versions loaded at start.")
    ] = False,
    idle_exit: Annotated[
        float | None, typer.Option("--idle-exit", help="Exit after no request for this long (s).")
    ] = None,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Serve MODEL@ALIAS over HTTP until Ctrl-C: POST /v1/models/<name>:predict with a key.

    It follows the alias (a promotion switches it, without failing a request) unless --pin.
    Keys: EPHEMERID_SERVING_KEYS (name=key pairs), else the dev host's keys in the home.
    """
    require_extra("uvicorn", "serve")
    require_extra("starlette", "serve")
    from ephemerid.serving.server import PredictionService, Ready
    from ephemerid.serving.settings import ServingSettings

    if not ref and not split:
        raise BadInput("give MODEL@ALIAS or MODEL:VERSION, or --split ref=weight,...")
    settings = Settings.from_env(home=home)
    check_home(settings)  # a mistyped --home is an error, not a new empty home with keys
    keys_file = _keys_file(settings.home)
    serving = ServingSettings.from_env(
        model=ref or None,
        split=split,
        code=code,
        entrypoint=entrypoint,
        port=port,
        host=host,
        pin=pin or None,
        idle_exit_s=idle_exit,
        keys_file=keys_file,
    )
    service = PredictionService(serving, settings)
    sandbox.undumpable()  # the model's workers (same user) cannot read this process's keys

    def ready(info: Ready) -> None:
        where = str(serving.keys_file) if serving.keys_file else "EPHEMERID_SERVING_KEYS"
        if json_:
            line = {"url": info.url, "versions": info.versions, "keys": where}
            print(json.dumps(line), flush=True)
            return
        served = ", ".join(f"{v['model']}:{v['version']}" for v in info.versions)
        console.print(f"serving {served} at [bold]{info.url}[/]")
        name = (ref or split or "").split(":")[0].split("@")[0]
        console.print(
            f"  curl -H 'x-ephemerid-key: KEY' -H 'content-type: application/json' "
            f"-d '{{\"rows\": [...]}}' {info.url}/v1/models/{name}:predict",
            markup=False,
        )
        console.print(f"  KEY: a key in {where}; Ctrl-C stops it", markup=False)

    try:
        sock = service.bind()
    except OSError as exc:
        where = f"{serving.host}:{serving.port}"
        raise BadInput(f"cannot listen on {where}: {exc.strerror}; try --port 0") from None
    try:
        asyncio.run(service.serve(sock, ready))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if service.idle_exited and not json_:
        console.print(f"no request for {serving.idle_exit_s:g} s: stopped")


def _keys_file(home: Path) -> Path | None:
    """The dev host's keys file (made if absent) unless EPHEMERID_SERVING_KEYS gives keys."""
    if os.environ.get("EPHEMERID_SERVING_KEYS_FILE"):
        return None  # the setting names its own
    if os.environ.get("EPHEMERID_SERVING_KEYS"):
        return None
    path = home / KEYS_FILE
    if not path.is_file():
        require_extra("azure.functions", "devhost")
        from ephemerid.devhost.keys import load_or_create

        load_or_create(home)
    return path

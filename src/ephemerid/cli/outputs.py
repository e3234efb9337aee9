"""`eph outputs JOB [--download DIR]`: what a job wrote to its output folder, and a copy of it.

The outputs are what the runner uploaded from ``EPHEMERID_OUTPUT_DIR``, under
``runs/<job>/outputs/`` in the bucket. A download keeps their relative paths under DIR and
checks every one before it writes any: a name that would land outside DIR (through ``..``, an
absolute path, or a link already in DIR) refuses the whole download, naming it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ephemerid import names
from ephemerid.artifacts import ArtifactStore, Stat, safe_key
from ephemerid.cli.options import Home, Json, console, service_for
from ephemerid.cli.render import Listing, dump
from ephemerid.errors import BadInput, UnsafeName

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Output:
    name: str  # relative to the job's output folder
    size: int
    key: str


def outputs(
    job_id: str,
    download: Annotated[
        Path | None, typer.Option(help="Copy the outputs into this folder, keeping their paths.")
    ] = None,
    home: Home = None,
    json_: Json = False,
) -> None:
    """A job's outputs (names and sizes); --download DIR copies them into DIR."""
    service = service_for(home)
    job = service.get(job_id)
    found = list_outputs(service.artifacts, job.id)
    written = download_to(service.artifacts, found, download) if download else []
    if json_:
        shown = [{"name": o.name, "size": o.size, "uri": service.uri(o.key)} for o in found]
        place = str(download.resolve()) if download else None
        dump({"job": job.id, "state": job.state.value, "outputs": shown, "downloaded_to": place})
        return
    table = Listing(f"outputs of {job.id} ({job.state.value})", ("name", "size"))
    for output in found:
        table.add_row(output.name, str(output.size))
    console.print(table if found else f"{job.id} ({job.state.value}) has no outputs")
    if download and found:
        total = sum(o.size for o in found)
        console.print(f"downloaded {len(written)} file(s), {total} bytes, to {download.resolve()}")


def list_outputs(artifacts: ArtifactStore, job_id: str) -> list[Output]:
    prefix = names.run_key(job_id, names.OUTPUTS_DIR) + "/"
    stats: list[Stat] = sorted(artifacts.list(prefix), key=lambda s: s.key)
    return [Output(s.key.removeprefix(prefix), s.size, s.key) for s in stats]


def download_to(artifacts: ArtifactStore, found: list[Output], folder: Path) -> list[Path]:
    """Copy ``found`` into ``folder`` (made if need be), each file whole or not at all."""
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"--download: '{folder}' is a file, not a folder: name a folder")
    root = folder.resolve()
    targets = [(output, _target(root, output.name)) for output in found]
    for output, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy(artifacts, output.key, target)
    return [target for _, target in targets]


def _target(root: Path, name: str) -> Path:
    try:
        safe_key(name, what="output name")
    except UnsafeName as exc:
        raise BadInput(f"--download: {exc}; nothing was written") from exc
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        raise BadInput(
            f"--download: output '{name}' would be written to '{target}', outside '{root}' "
            "(a link in that folder leads out of it): remove the link or pick an empty folder; "
            "nothing was written"
        )
    return target


def _copy(artifacts: ArtifactStore, key: str, target: Path) -> None:
    fd, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out, artifacts.open_read(key) as stream:
            while chunk := stream.read(CHUNK):
                out.write(chunk)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise

"""`eph outputs JOB [--download DIR]`: what a job wrote to its output folder, and a copy of it.

The outputs are what the runner uploaded from ``EPHEMERID_OUTPUT_DIR``, under
``runs/<job>/outputs/`` in the bucket. A download keeps their relative paths under DIR and
checks every one before it writes any (``ephemerid.outputs``, which the Python API shares).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ephemerid.cli.options import Home, Json, console, service_for
from ephemerid.cli.render import Listing, dump
from ephemerid.outputs import download_to, list_outputs


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
    written = download_to(service.artifacts, found, download, "--download") if download else []
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

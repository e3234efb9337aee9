"""A job's outputs: what its runner uploaded from ``EPHEMERID_OUTPUT_DIR``, and a copy of them.

The outputs live under ``runs/<job>/outputs/`` in the bucket. A download keeps their relative
paths under its folder and checks every one before it writes any: a name that would land outside
the folder (through ``..``, an absolute path, or a link already in it) refuses the whole download,
naming it. ``eph outputs`` and the Python API (``Job.outputs``) both go through here.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ephemerid import names
from ephemerid.artifacts import ArtifactStore, Stat, safe_key
from ephemerid.errors import BadInput, UnsafeName

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Output:
    name: str  # relative to the job's output folder
    size: int
    key: str


def list_outputs(artifacts: ArtifactStore, job_id: str) -> list[Output]:
    prefix = names.run_key(job_id, names.OUTPUTS_DIR) + "/"
    stats: list[Stat] = sorted(artifacts.list(prefix), key=lambda s: s.key)
    return [Output(s.key.removeprefix(prefix), s.size, s.key) for s in stats]


def download_to(
    artifacts: ArtifactStore, found: list[Output], folder: Path, what: str = "download"
) -> list[Path]:
    """Copy ``found`` into ``folder`` (made if need be), each file whole or not at all.

    ``what`` names the caller's option in an error (``--download`` for the CLI).
    """
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{what}: '{folder}' is a file, not a folder: name a folder")
    root = folder.resolve()
    targets = [(output, _target(root, output.name, what)) for output in found]
    for output, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy(artifacts, output.key, target)
    return [target for _, target in targets]


def _target(root: Path, name: str, what: str) -> Path:
    try:
        safe_key(name, what="output name")
    except UnsafeName as exc:
        raise BadInput(f"{what}: {exc}; nothing was written") from exc
    target = (root / name).resolve()
    if not target.is_relative_to(root):
        raise BadInput(
            f"{what}: output '{name}' would be written to '{target}', outside '{root}' "
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

"""The built environments under a home's ``envs/``: list them, prune the ones no job uses.

An environment is in use while a job holds its lock (``build``): prune never removes one then,
whatever its age. One that is not in use is rebuilt on demand by the next job that needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ephemerid.envs.build import LOCKS, MARKER, USED, UV_CACHE, lock_path


@dataclass(frozen=True)
class Cached:
    id: str
    path: Path
    ready: bool  # False: a build cut short, or one running now
    in_use: bool
    size_bytes: int
    last_used: datetime | None
    details: dict[str, Any]  # the build's marker: python, installer, requirements, build_s...

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": str(self.path),
            "ready": self.ready,
            "in_use": self.in_use,
            "size_bytes": self.size_bytes,
            "last_used": self.last_used.isoformat() if self.last_used else None,
            **{k: v for k, v in self.details.items() if k != "id"},
        }


@dataclass(frozen=True)
class Pruned:
    removed: list[Cached]
    in_use: list[Cached]  # old enough, but a job holds it
    kept: list[Cached]  # used more recently than asked


def list_environments(root: Path) -> list[Cached]:
    """Every environment folder under ``root``, most recently used first."""
    found = []
    for folder in _folders(root):
        with _exclusive(root, folder.name) as free:
            found.append(_describe(folder, in_use=not free))
    return sorted(
        found, key=lambda c: c.last_used or datetime.min.replace(tzinfo=UTC), reverse=True
    )


def prune(root: Path, older_than_s: float = 0.0, now: datetime | None = None) -> Pruned:
    """Remove each environment no job is using and none has used for ``older_than_s``."""
    now = now or datetime.now(UTC)
    removed, in_use, kept = [], [], []
    for folder in _folders(root):
        with _exclusive(root, folder.name) as free:
            cached = _describe(folder, in_use=not free)
            idle = (now - cached.last_used).total_seconds() if cached.last_used else None
            if idle is not None and idle < older_than_s:
                kept.append(cached)
            elif not free:
                in_use.append(cached)
            else:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(cached)
    return Pruned(removed, in_use, kept)


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    skip = {LOCKS, UV_CACHE}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip)


@contextlib.contextmanager
def _exclusive(root: Path, env_id: str) -> Iterator[bool]:
    """Whether the environment is free, holding it (so no job starts on it) while inside."""
    path = lock_path(root, env_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        yield free
    finally:
        os.close(fd)


def _describe(folder: Path, *, in_use: bool) -> Cached:
    details: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        details = json.loads((folder / MARKER).read_text())
    used = None
    with contextlib.suppress(OSError):
        used = datetime.fromtimestamp((folder / USED).stat().st_mtime, UTC)
    size = sum(p.lstat().st_size for p in folder.rglob("*") if not p.is_dir())
    ready = bool(details)
    return Cached(folder.name, folder, ready, in_use, size, used, details)

"""The job's checkpoint folder, kept in the bucket while the job runs.

The runner stages ``runs/<job>/checkpoint/`` into ``EPHEMERID_CHECKPOINT_DIR`` before the
entrypoint starts, and ``CheckpointSync`` sends back what the entrypoint changes there: every
``checkpoint_upload_s`` from a thread of its own (the entrypoint never waits on it), and once more
when the run ends. Each pass uploads only the files whose size or modification time changed since
they were last uploaded (or staged); a file that changes while it is read is sent again on the
next pass. A spot VM may vanish with no notice (Azure's Preempt events are best effort), so what
a resumed run finds is the last pass's upload: write a checkpoint whole under another name, then
rename it into place (``os.replace``), so that a pass never reads a half-written one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from ephemerid.artifacts import ArtifactStore, safe_key

Signature = tuple[int, int, int]  # size, modification time (ns), inode


def _signature(info: os.stat_result) -> Signature:
    return info.st_size, info.st_mtime_ns, info.st_ino


class CheckpointSync:
    """Uploads the changed files of ``folder`` to ``prefix/<relative path>`` in ``store``."""

    def __init__(
        self,
        store: ArtifactStore,
        folder: Path,
        prefix: str,
        skip: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store, self.folder, self.prefix, self.skip = store, folder, prefix, skip
        self._sent: dict[str, Signature] = {}
        self._skipped: set[str] = set()
        self._lock = threading.Lock()  # one pass at a time: the periodic one and the last

    def staged(self) -> None:
        """Take the folder as it is now as uploaded already (it was staged from the bucket)."""
        with self._lock:
            for name, path in self._files():
                self._sent[name] = _signature(path.stat(follow_symlinks=False))

    def sync(self) -> list[str]:
        """Upload every file changed since its last upload; the relative names uploaded."""
        with self._lock:
            return [name for name, path in self._files() if self._send(name, path)]

    def every(self, interval_s: float, stop: threading.Event, say: Callable[[str], None]) -> None:
        """Sync every ``interval_s`` until ``stop`` is set; a failed pass is said and retried."""
        while not stop.wait(interval_s):
            try:
                sent = self.sync()
            except Exception as exc:  # the bucket may be down a while: the next pass tries again
                say(f"checkpoint upload failed, trying again in {interval_s:.0f}s: {exc}")
                continue
            if sent:
                say(f"checkpoint: uploaded {len(sent)} changed file(s)")

    def _files(self) -> list[tuple[str, Path]]:
        found = []
        inside = self.folder.resolve()
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            name = path.relative_to(self.folder).as_posix()
            target = path.resolve()
            if not target.is_relative_to(inside):
                if self.skip is not None and name not in self._skipped:
                    self._skipped.add(name)
                    self.skip(name, f"it links to '{target}', outside '{self.folder}'")
                continue
            found.append((name, target))
        return found

    def _send(self, name: str, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # the checked file, not a new link
        except FileNotFoundError:  # replaced or removed meanwhile: the next pass sees it
            return False
        with os.fdopen(fd, "rb") as stream:
            before = _signature(os.fstat(fd))
            if self._sent.get(name) == before:
                return False
            self.store.write(safe_key(f"{self.prefix}/{name}"), stream)
            after = _signature(os.fstat(fd))
        try:
            still = _signature(path.stat(follow_symlinks=False))
        except FileNotFoundError:
            still = None
        if before == after == still:  # read whole and unchanged: done until it changes
            self._sent[name] = before
        return True

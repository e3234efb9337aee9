"""A queue in a folder: one file per message, for queue triggers on one machine.

Layout under the queue's folder::

    <id>               a message waiting (the file's bytes are the body; its name is the id)
    .locked/<id>       a message being handled; back in the queue when its lock expires
    .count/<id>        how often it has been delivered
    .reasons/<id>.json why it was dead-lettered (dead-letter folders only)

Dropping a file in the folder sends a message; it is taken once it has stopped changing for two
polls. A message is claimed by renaming it, so dev hosts sharing a home never both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ephemerid.errors import BadInput

_LOCKED, _COUNT, _REASONS = ".locked", ".count", ".reasons"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


@dataclass(frozen=True)
class Received:
    id: str
    body: bytes
    delivery_count: int
    enqueued_at: float


class FolderQueue:
    def __init__(self, root: Path, lock_s: float = 60.0) -> None:
        self.root = root
        self.lock_s = lock_s
        for sub in (_LOCKED, _COUNT):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._sizes: dict[str, tuple[int, int]] = {}

    def send(self, body: bytes, message_id: str | None = None) -> str:
        """Put a message in the queue (whole, or not at all); returns its id."""
        message_id = message_id or uuid.uuid4().hex
        if not _ID.match(message_id):
            raise BadInput(f"message id '{message_id}' must be letters, digits, '.', '_', '-'")
        temp = self.root / f".tmp-{uuid.uuid4().hex}"
        temp.write_bytes(body)
        os.replace(temp, self.root / message_id)
        return message_id

    def waiting(self) -> list[str]:
        """Ids of the messages waiting, oldest first."""
        files = [p for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")]
        return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime_ns)]

    def receive(self, limit: int = 16) -> list[Received]:
        """Claim up to ``limit`` settled messages, after returning those whose lock expired."""
        self._expire_locks()
        settled, sizes = [], {}
        for name in self.waiting():
            with contextlib.suppress(FileNotFoundError):
                st = (self.root / name).stat()
                sizes[name] = (st.st_size, st.st_mtime_ns)
                if self._sizes.get(name) == sizes[name]:
                    settled.append(name)
        self._sizes = sizes
        claimed = [m for m in (self._claim(name) for name in settled[:limit]) if m]
        return claimed

    def complete(self, message: Received) -> None:
        (self.root / _LOCKED / message.id).unlink(missing_ok=True)
        (self.root / _COUNT / message.id).unlink(missing_ok=True)

    def abandon(self, message: Received) -> None:
        """Make the message visible again; its delivery count is kept."""
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.root / _LOCKED / message.id, self.root / message.id)

    def move_to(self, message: Received, other: FolderQueue, reason: dict[str, Any]) -> None:
        """Move the message to ``other`` (a dead-letter or poison queue) with why."""
        reasons = other.root / _REASONS
        reasons.mkdir(parents=True, exist_ok=True)
        (reasons / f"{message.id}.json").write_text(json.dumps(reason, indent=2))
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.root / _LOCKED / message.id, other.root / message.id)
        (self.root / _COUNT / message.id).unlink(missing_ok=True)

    def reason(self, message_id: str) -> dict[str, Any]:
        return dict(json.loads((self.root / _REASONS / f"{message_id}.json").read_text()))

    def _claim(self, name: str) -> Received | None:
        locked = self.root / _LOCKED / name
        try:
            enqueued = (self.root / name).stat().st_mtime
            os.replace(self.root / name, locked)  # atomic: only one host gets it
        except FileNotFoundError:
            return None
        os.utime(locked)  # the lock starts now
        counter = self.root / _COUNT / name
        count = int(counter.read_text() or 0) + 1 if counter.exists() else 1
        counter.write_text(str(count))
        return Received(name, locked.read_bytes(), count, enqueued)

    def _expire_locks(self) -> None:
        deadline = time.time() - self.lock_s
        for path in (self.root / _LOCKED).iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < deadline:
                    os.replace(path, self.root / path.name)

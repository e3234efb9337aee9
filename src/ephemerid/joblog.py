"""The job's log as the runner writes it: batched appends, a size limit, a tail, secrets masked."""

from __future__ import annotations

import collections
import threading
import time

from ephemerid import sandbox
from ephemerid.artifacts import ArtifactStore

LOG_FLUSH_S = 0.5
LOG_FLUSH_BYTES = 256 * 1024


class LogPump:
    """Copies the child's output to the job log in batches, up to a limit, keeping a tail;
    secrets masked in both (the end of an unfinished line waits, so a split one is masked whole).
    """

    def __init__(
        self, store: ArtifactStore, key: str, limit: int, mask: sandbox.Mask | None = None
    ) -> None:
        self.store, self.key, self.limit = store, key, limit
        self.mask = mask or sandbox.Mask()
        self._held = b""
        self.written = 0
        self.dropped = 0
        self.tail: collections.deque[bytes] = collections.deque(maxlen=20)
        self._buffer = bytearray()
        self._partial = b""
        self._cut = False  # whether the front of the unfinished line was dropped
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._write(self._masked(data))

    def _masked(self, data: bytes) -> bytes:
        if not self.mask:
            return data
        text = self.mask.bytes(self._held + data)
        line_end = max(text.rfind(b"\n"), text.rfind(b"\r")) + 1
        held = min(len(text) - line_end, self.mask.longest - 1)
        self._held = text[len(text) - held :]
        return text[: len(text) - held]

    def _write(self, data: bytes) -> None:
        room = self.limit - self.written - len(self._buffer)
        if room < len(data):
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._buffer += data
        if (
            len(self._buffer) >= LOG_FLUSH_BYTES
            or time.monotonic() - self._last_flush > LOG_FLUSH_S
        ):
            self._flush()

    def note_tail(self, data: bytes) -> None:
        """Keep the last lines whole, though a line may arrive over several reads."""
        lines = (self._partial + data).split(b"\n")
        if self._cut:  # a secret cut at the front may have left its end: drop that much more
            lines[0] = lines[0][self.mask.longest :]
        keep = 500 + self.mask.longest
        self._cut, self._partial = len(lines[-1]) > keep, lines.pop()[-keep:]
        for line in lines[-20:]:
            self.tail.append(self.mask.bytes(line)[:500])

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.store.append(self.key, bytes(self._buffer))
            self.written += len(self._buffer)
            self._buffer.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._write(self._held)
            self._held = b""
            self._flush()
        if self.dropped:
            note = (
                f"\n[ephemerid] log truncated at {self.limit} bytes; "
                f"{self.dropped} more bytes were not kept\n"
            )
            self.store.append(self.key, note.encode())

    def last_lines(self) -> str:
        partial = self._partial[self.mask.longest :] if self._cut else self._partial
        partial = self.mask.bytes(partial)[-500:]
        lines = [*self.tail, partial] if partial else list(self.tail)
        return b"\n".join(lines).decode("utf-8", "replace")[-1500:]

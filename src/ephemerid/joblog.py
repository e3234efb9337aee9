"""What the runner streams while the job runs: the job's log (batched appends, a size limit, a
tail, secrets masked) and its metrics (the complete lines of the metrics file, appended as they
come)."""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

from ephemerid import sandbox
from ephemerid.artifacts import ArtifactStore
from ephemerid.track import Latest

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


class MetricsPump:
    """Appends the complete lines user code adds to its metrics file to the job's metrics.jsonl,
    at each ``pump`` (the runner's log cadence), up to ``limit`` bytes, secrets masked.

    ``latest`` keeps the last value of each metric from every line written, kept or not: the
    result's summary. A file the code truncates is read again from its start.
    """

    READ = 1024 * 1024  # at most this much per pump

    def __init__(
        self, store: ArtifactStore, key: str, path: Path, limit: int, mask: sandbox.Mask
    ) -> None:
        self.store, self.key, self.path, self.limit, self.mask = store, key, path, limit, mask
        self.latest = Latest()
        self.written = 0
        self.dropped = 0
        self._offset = 0
        self._lock = threading.Lock()

    def pump(self) -> None:
        with self._lock:
            while self._pump_once():
                pass

    def _pump_once(self) -> bool:
        """Append the next complete lines; whether there may be more."""
        try:  # never through a link: the file is the code's, its folder the runner's
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as stream:
            if os.fstat(fd).st_size < self._offset:
                self._offset = 0
            stream.seek(self._offset)
            data = stream.read(self.READ)
        whole = data[: data.rfind(b"\n") + 1]
        if not whole:  # a line longer than READ is no metric: skip it
            if len(data) == self.READ:
                self._offset += len(data)
                self.dropped += len(data)
                return True
            return False
        self._append(self.mask.bytes(whole))  # first: a failed append is tried again next pump
        self._offset += len(whole)
        self.latest.feed(whole)
        return len(data) == self.READ

    def _append(self, lines: bytes) -> None:
        room = self.limit - self.written
        if len(lines) > room:
            kept = lines[: lines.rfind(b"\n", 0, max(room, 0)) + 1] if room > 0 else b""
            self.dropped += len(lines) - len(kept)
            lines = kept
        if lines:
            self.store.append(self.key, lines)
            self.written += len(lines)

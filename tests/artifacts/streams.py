"""A stream fed by a generator, and the streaming check the artifact contract runs per adapter.

Run as a script, ``python streams.py ROOT_URI SIZE_MB`` writes SIZE_MB megabytes through the
artifact store at ROOT_URI (its settings come from the environment), reads them back in chunks,
and prints JSON with the sizes, the digests and how far this process's peak RSS grew meanwhile.
The test runs it in a fresh process because ru_maxrss is the high-water mark of a whole process.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import sys
from collections.abc import Iterable
from typing import Any

MB = 1024 * 1024
KEY = "incoming/train/big.bin"


class GeneratedStream(io.RawIOBase):
    """A readable stream fed by an iterator of chunks: nothing is held beyond one chunk."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stream_through(root_uri: str, size_mb: int) -> dict[str, Any]:
    from ephemerid.artifacts import get_bytes, open_artifacts, put_bytes

    store = open_artifacts(root_uri, os.environ)
    put_bytes(store, "incoming/warmup/small.bin", b"w" * 1024)  # imports and connections
    get_bytes(store, "incoming/warmup/small.bin")
    blocks = [bytes([i]) * MB for i in range(4)]
    expected = hashlib.sha256()
    for i in range(size_mb):
        expected.update(blocks[i % 4])
    before = peak_rss_bytes()

    stat = store.write(KEY, GeneratedStream(blocks[i % 4] for i in range(size_mb)))
    read_back, read_size = hashlib.sha256(), 0
    with store.open_read(KEY) as stream:
        while chunk := stream.read(MB):
            read_back.update(chunk)
            read_size += len(chunk)

    growth = peak_rss_bytes() - before
    store.delete(KEY)
    return {
        "expected_sha256": expected.hexdigest(),
        "written_size": stat.size,
        "written_sha256": stat.sha256,
        "read_size": read_size,
        "read_sha256": read_back.hexdigest(),
        "peak_rss_growth": growth,
    }


if __name__ == "__main__":
    print(json.dumps(stream_through(sys.argv[1], int(sys.argv[2]))))

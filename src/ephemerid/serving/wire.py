"""The frames between the service and a model's worker process, over a pair of pipes.

A frame is a 4-byte big-endian length, one byte of kind, and the payload. The service sends
``PREDICT`` (an Arrow IPC stream of the rows); the worker answers ``READY`` once (JSON: the
model's input fields) or ``FATAL`` (its load failed, a short reason), then for each predict one
``ROWS`` (an Arrow IPC stream of as many rows) or ``ERROR`` (a short reason).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import pyarrow as pa
import pyarrow.ipc as ipc

PREDICT = b"P"
READY = b"R"
FATAL = b"F"
ROWS = b"O"
ERROR = b"E"
_HEAD = struct.Struct(">IB")


class Closed(Exception):
    """The other end closed its pipe."""


HEAD_SIZE = _HEAD.size


def head(kind: bytes, length: int) -> bytes:
    return _HEAD.pack(length, kind[0])


def unpack(data: bytes) -> tuple[int, bytes]:
    """A frame head's payload length and kind."""
    length, kind = _HEAD.unpack(data)
    return length, bytes([kind])


def frame(kind: bytes, payload: bytes | memoryview) -> bytes:
    """The whole frame in one buffer: written at once, the reader wakes once for it."""
    return head(kind, len(payload)) + payload


def send(out: BinaryIO, kind: bytes, payload: bytes | memoryview) -> None:
    out.write(frame(kind, payload))
    out.flush()


def receive(source: BinaryIO) -> tuple[bytes, bytes]:
    head = _exactly(source, _HEAD.size)
    length, kind = _HEAD.unpack(head)
    return bytes([kind]), _exactly(source, length)


def _exactly(source: BinaryIO, size: int) -> bytes:
    data = source.read(size)  # a buffered reader: all of it, or less only at the end
    if data is None or len(data) < size:
        raise Closed("the pipe closed")
    return data


def encode(table: pa.Table) -> memoryview:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return memoryview(sink.getvalue())


def decode(data: bytes) -> pa.Table:
    return ipc.open_stream(pa.py_buffer(data)).read_all()

"""Input and output formats of the batch harness: Parquet, CSV and JSON Lines, by pyarrow.

Inputs are read as a stream of record batches of ``rows_per_batch`` rows from a file object
(``source``): a local file, or ``RangeFile`` over the store's ranged reads, so Parquet (which
seeks) needs no staging. Outputs are written shard by shard to a local file, then uploaded.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ephemerid.artifacts import ArtifactStore
from ephemerid.batch.spec import FORMATS, unreadable

SUFFIX = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
BLOCK = 8 * 1024 * 1024  # CSV and JSON decoding block
PARQUET_BUFFER = 1024 * 1024  # what a Parquet column is read ahead by


class InputError(Exception):
    """An input the harness cannot read; the message names the file and what to do."""


def format_of(key: str) -> str:
    """The input format of ``key`` by its extension; InputError naming it and the accepted."""
    suffix = PurePosixPath(key).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(unreadable(key, 1))
    return FORMATS[suffix]


class RangeFile(io.RawIOBase):
    """A seekable, read-only file over ``store.open_read(key, offset)``: each read after a seek
    opens a stream from there, so pyarrow reads a Parquet footer and its row groups only."""

    def __init__(self, store: ArtifactStore, key: str, size: int) -> None:
        self.store, self.key, self.size = store, key, size
        self.pos = 0
        self.stream: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        target = max(0, base + offset)
        if target != self.pos and self.stream is not None:
            self.stream.close()
            self.stream = None
        self.pos = target
        return target

    def readinto(self, buffer: Any) -> int:
        if self.pos >= self.size:
            return 0
        if self.stream is None:
            self.stream = self.store.open_read(self.key, self.pos)
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        super().close()


def open_source(store: ArtifactStore, key: str, size: int) -> BinaryIO:
    """The input as a file pyarrow can read: the store's own when it seeks (a local folder),
    else ranged reads (Blob Storage)."""
    stream = store.open_read(key)
    if stream.seekable():
        return stream
    stream.close()
    return io.BufferedReader(RangeFile(store, key, size), buffer_size=BLOCK)


class BadRows:
    """Malformed CSV rows: counted and skipped (``skip``), or the first kept for the error."""

    def __init__(self, skip: bool) -> None:
        self.skip, self.count, self.first = skip, 0, ""

    def __call__(self, row: Any) -> str:
        if self.skip:
            self.count += 1
            return "skip"
        self.first = self.first or str(row.text)
        return "error"


def batches(source: BinaryIO, fmt: str, rows: int, bad: BadRows) -> Iterator[pa.RecordBatch]:
    """The file's rows as record batches of at most ``rows`` rows (each read only as asked)."""
    if fmt == "parquet":
        # no pre-buffering: it keeps the column chunks of every row group read in memory until
        # the file is closed (memory grew with the file); a buffered stream reads page by page
        parquet = pq.ParquetFile(source, pre_buffer=False, buffer_size=PARQUET_BUFFER)
        yield from parquet.iter_batches(batch_size=rows)
        return
    if fmt == "csv":
        reader: Any = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=BLOCK, use_threads=True),
            parse_options=pacsv.ParseOptions(invalid_row_handler=bad),
        )
    else:
        reader = pajson.open_json(source, read_options=pajson.ReadOptions(block_size=BLOCK))
    for block in reader:
        for start in range(0, block.num_rows, rows):
            yield block.slice(start, rows)


def line_of(store: ArtifactStore, key: str, text: str) -> int | None:
    """The 1-based line of ``key`` that reads ``text`` (a bad CSV row), None if not found."""
    with store.open_read(key) as stream:
        for number, line in enumerate(io.TextIOWrapper(stream, errors="replace"), start=1):
            if line.rstrip("\r\n") == text:
                return number
    return None


class ShardWriter:
    """One output shard, written to ``path`` batch by batch in ``fmt``. Parquet dictionary-
    encodes only the prediction columns that are not floating point (classes, labels): the kept
    columns (ids) and scores are mostly distinct, and trying a dictionary on them tripled the
    writer's CPU for larger files (BENCHMARKS.md, benchmark 4)."""

    def __init__(self, path: Path, fmt: str, keep: Sequence[str] = ()) -> None:
        self.path, self.fmt, self.rows, self.keep = path, fmt, 0, set(keep)
        self._writer: Any = None
        self._file: Any = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None and self._file is None:
            self._open(table.schema)
        if self.fmt == "jsonl":
            for row in table.to_pylist():
                self._file.write(json.dumps(row, default=str).encode() + b"\n")
        else:
            self._writer.write_table(table) if self.fmt == "parquet" else self._writer.write(table)
        self.rows += table.num_rows

    def _open(self, schema: pa.Schema) -> None:
        if self.fmt == "parquet":
            coded = [f.name for f in schema if self._coded(f)]
            self._writer = pq.ParquetWriter(str(self.path), schema, use_dictionary=coded or False)
        elif self.fmt == "csv":
            self._writer = pacsv.CSVWriter(str(self.path), schema)
        else:
            self._file = self.path.open("wb")

    def _coded(self, field: pa.Field) -> bool:
        return field.name not in self.keep and not pa.types.is_floating(field.type)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()

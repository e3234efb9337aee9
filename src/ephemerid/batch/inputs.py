"""The harness's inputs: each launch input (a key, or a prefix of keys) read in order as record
batches, each tagged with its file and first row, with every bad input a clear InputError."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ephemerid.artifacts import ArtifactStore
from ephemerid.batch.formats import BadRows, InputError, batches, format_of, line_of, open_source
from ephemerid.batch.spec import BatchSpec, unreadable


@dataclass(frozen=True)
class Piece:
    """Rows ``start`` to ``start + batch.num_rows`` of input file ``key``."""

    key: str
    start: int
    batch: pa.RecordBatch


def input_files(store: ArtifactStore, inputs: dict[str, str]) -> list[tuple[str, int]]:
    """(key, size) of every input file in order: the launch's order, a prefix's keys sorted."""
    files: list[tuple[str, int]] = []
    for name, key in inputs.items():
        key = key.rstrip("/")
        stat = store.stat(key)
        found = [(stat.key, stat.size)] if stat else []
        found = found or sorted((s.key, s.size) for s in store.list(key + "/"))
        if not found:
            raise InputError(f"input '{name}' ({store.uri(key)}) is empty or gone")
        for item, _ in found:
            format_of(item)  # every file refused before any is read
        files += found
    if not files:
        raise InputError("a batch job needs inputs: name at least one in the spec's 'inputs'")
    return files


class Reader:
    """Reads every input file in order; ``bad_rows`` counts the malformed CSV rows skipped."""

    def __init__(self, store: ArtifactStore, spec: BatchSpec, files: list[tuple[str, int]]):
        self.store, self.spec, self.files = store, spec, files
        self.bad_rows = 0

    def pieces(self, skip: int = 0) -> Iterator[Piece]:
        """Every row after the first ``skip`` (those of complete shards), in batches."""
        seen = 0
        for key, size in self.files:
            if size == 0:
                raise InputError(unreadable(key, size))
            if seen < skip and (whole := self._parquet_rows(key, size)) <= skip - seen:
                seen += whole  # all in complete shards: its footer says so, nothing decoded
                continue
            rows = 0
            for batch in self._read(key, size):
                self._check_keep(key, batch.schema)
                start, rows = rows, rows + batch.num_rows
                ahead = max(0, min(batch.num_rows, skip - seen))
                seen += batch.num_rows
                if ahead < batch.num_rows:
                    yield Piece(key, start + ahead, batch.slice(ahead))
            if rows == 0:
                raise InputError(f"input '{key}' has no rows: there is nothing to score")

    def _parquet_rows(self, key: str, size: int) -> int:
        """A Parquet file's rows from its footer; for other formats more than any skip."""
        if format_of(key) != "parquet":
            return sys.maxsize
        with open_source(self.store, key, size) as source:
            try:
                return int(pq.ParquetFile(source).metadata.num_rows)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"input '{key}' could not be read as Parquet: {exc}") from exc

    def _read(self, key: str, size: int) -> Iterator[pa.RecordBatch]:
        bad = BadRows(self.spec.on_bad_rows == "skip")
        fmt = format_of(key)
        with open_source(self.store, key, size) as source:
            stream = batches(source, fmt, self.spec.rows_per_batch, bad)
            while True:
                try:
                    batch = next(stream)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError, ValueError) as exc:
                    raise self._explain(key, fmt, bad, exc) from exc
                finally:
                    self.bad_rows += bad.count
                    bad.count = 0
                yield batch

    def _explain(self, key: str, fmt: str, bad: BadRows, exc: Exception) -> InputError:
        what = {"parquet": "Parquet", "csv": "CSV", "jsonl": "JSON Lines"}[fmt]
        if bad.first:
            line = line_of(self.store, key, bad.first)
            where = f" at line {line}" if line else ""
            return InputError(
                f"input '{key}' has a malformed CSV row{where} ({exc}): fix it, or set "
                "batch.on_bad_rows: skip to skip and count such rows"
            )
        return InputError(f"input '{key}' could not be read as {what}: {exc}")

    def _check_keep(self, key: str, schema: pa.Schema) -> None:
        missing = [name for name in self.spec.keep if name not in schema.names]
        if missing:
            raise InputError(
                f"input '{key}' lacks the batch.keep column(s) {', '.join(missing)} "
                f"(it has {', '.join(schema.names)}): nothing of it was scored"
            )


def split(spec: BatchSpec, batch: pa.RecordBatch) -> tuple[pa.Table, pa.RecordBatch]:
    """(the kept columns, the features: every other column) of a batch."""
    table = pa.Table.from_batches([batch])
    kept = table.select(spec.keep)
    features = [name for name in batch.schema.names if name not in spec.keep]
    return kept, batch.select(features)


SAMPLE = 1024 * 1024  # the bytes of a CSV or JSON Lines file its row count is estimated from


def file_rows(store: ArtifactStore, key: str, size: int) -> int:
    """The rows of input file ``key`` before it is read: a Parquet file's footer says; a CSV or
    JSON Lines file's are counted in its first MiB and, if it is longer, estimated from its
    bytes at that many bytes a row (a fan-out's plan, not a promise)."""
    fmt = format_of(key)
    if fmt == "parquet":
        with open_source(store, key, size) as source:
            try:
                return int(pq.ParquetFile(source).metadata.num_rows)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"input '{key}' could not be read as Parquet: {exc}") from exc
    with store.open_read(key) as stream:
        sample = stream.read(SAMPLE)
    lines = sample.count(b"\n") + (0 if sample.endswith(b"\n") or not sample else 1)
    header = len(sample.split(b"\n", 1)[0]) + 1 if fmt == "csv" else 0
    rows = max(0, lines - (1 if fmt == "csv" else 0))
    if len(sample) >= size or rows == 0:
        return rows
    return round(rows * (size - header) / max(1, len(sample) - header))

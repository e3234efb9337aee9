"""Inputs streamed from Blob Storage (Azurite): Parquet read through ranged reads, with no
staging, and the same clear errors as from a local bucket."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from batching import encoded, table
from ephemerid.artifacts import open_artifacts, put_bytes
from ephemerid.artifacts.blob import BlobArtifactStore
from ephemerid.batch.formats import InputError, RangeFile
from ephemerid.batch.inputs import Reader, input_files
from ephemerid.batch.spec import BatchSpec


@pytest.fixture
def store(azurite_connection: str) -> Iterator[BlobArtifactStore]:
    opened = open_artifacts("az://", {"EPHEMERID_STORAGE": azurite_connection})
    assert isinstance(opened, BlobArtifactStore)
    yield opened
    opened.client.close()


@pytest.fixture
def where() -> str:
    """A prefix of this test's own: tests share one Azurite, maybe at once."""
    return f"incoming/{uuid.uuid4().hex}"


def rows_of(reader: Reader) -> list[int]:
    return [i for piece in reader.pieces() for i in piece.batch.column("id").to_pylist()]


@pytest.mark.parametrize("skip", [300, 1000, 1200])
@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_each_format_streams_from_blob_storage_in_batches_after_the_rows_skipped(
    store: BlobArtifactStore, where: str, fmt: str, skip: int
) -> None:
    put_bytes(store, f"{where}/scores/a.{fmt}", encoded(table(1000), fmt))
    put_bytes(store, f"{where}/scores/b.{fmt}", encoded(table(500, start=1000), fmt))
    spec = BatchSpec.model_validate({"rows_per_batch": 128})
    reader = Reader(store, spec, input_files(store, {"rows": f"{where}/scores"}))

    pieces = list(reader.pieces(skip=skip))

    assert all(p.batch.num_rows <= 128 for p in pieces)
    ids = [i for p in pieces for i in p.batch.column("id").to_pylist()]
    assert ids == list(range(skip, 1500))
    first = ("a", skip) if skip < 1000 else ("b", skip - 1000)
    assert (pieces[0].key, pieces[0].start) == (f"{where}/scores/{first[0]}.{fmt}", first[1])


def test_a_range_file_seeks_and_reads_like_the_blob(store: BlobArtifactStore, where: str) -> None:
    data = bytes(range(256)) * 64
    put_bytes(store, f"{where}/x.bin", data)
    stream = RangeFile(store, f"{where}/x.bin", len(data))

    stream.seek(-10, 2)
    tail = stream.read(10)
    stream.seek(100)
    middle = stream.read(50)

    assert (tail, middle) == (data[-10:], data[100:150])
    assert stream.read(0) == b"" and stream.seekable()


def test_a_malformed_csv_row_in_a_blob_is_named_by_its_line(
    store: BlobArtifactStore, where: str
) -> None:
    put_bytes(store, f"{where}/bad.csv", b"id,x\n0,0.0\n1,1.0,extra\n")
    reader = Reader(
        store, BatchSpec.model_validate({}), input_files(store, {"rows": f"{where}/bad.csv"})
    )

    with pytest.raises(
        InputError, match=re.escape(f"input '{where}/bad.csv' has a malformed CSV row at line 3")
    ):
        rows_of(reader)


def test_an_unknown_format_in_a_prefix_is_refused_before_any_file_is_read(
    store: BlobArtifactStore, where: str
) -> None:
    put_bytes(store, f"{where}/s/a.csv", b"id\n1\n")
    put_bytes(store, f"{where}/s/b.txt", b"hello")

    with pytest.raises(InputError, match=re.escape(f"input '{where}/s/b.txt' is not a format")):
        input_files(store, {"rows": f"{where}/s"})

"""Inputs streamed from Blob Storage (Azurite): Parquet read through ranged reads, with no
staging, and the same clear errors as from a local bucket."""

from __future__ import annotations

import re
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
    for container in opened.client.list_containers():
        opened.client.delete_container(container.name)
    yield opened
    opened.client.close()


def rows_of(reader: Reader) -> list[int]:
    return [i for piece in reader.pieces() for i in piece.batch.column("id").to_pylist()]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_each_format_streams_from_blob_storage_in_batches(
    store: BlobArtifactStore, fmt: str
) -> None:
    put_bytes(store, f"incoming/scores/a.{fmt}", encoded(table(1000), fmt))
    put_bytes(store, f"incoming/scores/b.{fmt}", encoded(table(500, start=1000), fmt))
    spec = BatchSpec.model_validate({"rows_per_batch": 128})
    reader = Reader(store, spec, input_files(store, {"rows": "incoming/scores"}))

    pieces = list(reader.pieces(skip=300))

    assert all(p.batch.num_rows <= 128 for p in pieces)
    ids = [i for p in pieces for i in p.batch.column("id").to_pylist()]
    assert ids == list(range(300, 1500))
    assert (pieces[0].key, pieces[0].start) == (f"incoming/scores/a.{fmt}", 300)


def test_a_range_file_seeks_and_reads_like_the_blob(store: BlobArtifactStore) -> None:
    data = bytes(range(256)) * 64
    put_bytes(store, "incoming/x.bin", data)
    stream = RangeFile(store, "incoming/x.bin", len(data))

    stream.seek(-10, 2)
    tail = stream.read(10)
    stream.seek(100)
    middle = stream.read(50)

    assert (tail, middle) == (data[-10:], data[100:150])
    assert stream.read(0) == b"" and stream.seekable()


def test_a_malformed_csv_row_in_a_blob_is_named_by_its_line(store: BlobArtifactStore) -> None:
    put_bytes(store, "incoming/bad.csv", b"id,x\n0,0.0\n1,1.0,extra\n")
    reader = Reader(
        store, BatchSpec.model_validate({}), input_files(store, {"rows": "incoming/bad.csv"})
    )

    with pytest.raises(
        InputError, match=re.escape("input 'incoming/bad.csv' has a malformed CSV row at line 3")
    ):
        rows_of(reader)


def test_an_unknown_format_in_a_prefix_is_refused_before_any_file_is_read(
    store: BlobArtifactStore,
) -> None:
    put_bytes(store, "incoming/s/a.csv", b"id\n1\n")
    put_bytes(store, "incoming/s/b.txt", b"hello")

    with pytest.raises(InputError, match=re.escape("input 'incoming/s/b.txt' is not a format")):
        input_files(store, {"rows": "incoming/s"})

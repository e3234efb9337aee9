"""LocalArtifactStore: what only the folder bucket does (the contract is in test_contract.py).

Writes go through a temp file renamed into place, so a crash leaves no partial file under the
key, temp files are never listed, and no name reaches outside the bucket folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from artifacts.streams import MB, GeneratedStream
from ephemerid.artifacts import ADAPTERS, ArtifactStore, open_artifacts, put_bytes
from ephemerid.errors import BadInput, Conflict, UnsafeName


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


@pytest.fixture
def store(bucket: Path) -> ArtifactStore:
    return open_artifacts(f"file://{bucket}")


def files_on_disk(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_a_key_is_a_file_under_the_bucket_folder(store: ArtifactStore, bucket: Path) -> None:
    put_bytes(store, "runs/j/outputs/a.csv", b"a,b\n")

    assert (bucket / "runs/j/outputs/a.csv").read_bytes() == b"a,b\n"
    assert store.uri("runs/j/outputs/a.csv") == f"file://{bucket.resolve()}/runs/j/outputs/a.csv"


def test_a_write_that_fails_midway_leaves_no_temp_file(store: ArtifactStore, bucket: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * MB
        raise OSError("upload connection dropped")

    with pytest.raises(OSError, match="connection dropped"):
        store.write("incoming/train/big.csv", GeneratedStream(chunks()))

    assert files_on_disk(bucket) == []


def test_a_failed_overwrite_leaves_only_the_old_file(store: ArtifactStore, bucket: Path) -> None:
    put_bytes(store, "runs/j/model.pt", b"version one")

    def chunks() -> Iterator[bytes]:
        yield b"partial version two"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store.write("runs/j/model.pt", GeneratedStream(chunks()))

    assert files_on_disk(bucket) == ["runs/j/model.pt"]
    assert (bucket / "runs/j/model.pt").read_bytes() == b"version one"


def test_write_if_absent_leaves_no_temp_file_when_it_loses(
    store: ArtifactStore, bucket: Path
) -> None:
    put_bytes(store, "models/m/1/version.json", b"first claim")

    with pytest.raises(Conflict):
        put_bytes(store, "models/m/1/version.json", b"second claim", if_absent=True)

    assert files_on_disk(bucket) == ["models/m/1/version.json"]


def test_list_skips_temp_files_left_by_a_crashed_write(store: ArtifactStore, bucket: Path) -> None:
    put_bytes(store, "runs/j/result.json", b"{}")
    (bucket / "runs/j/.result.json.tmp-0badc0de").write_bytes(b"{half")

    assert [s.key for s in store.list("runs/")] == ["runs/j/result.json"]


def test_writing_over_a_folder_or_under_a_file_is_bad_input(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    with pytest.raises(BadInput, match="folder"):
        put_bytes(store, "runs/j", b"x")
    with pytest.raises(BadInput, match="is a file"):
        put_bytes(store, "runs/j/a.txt/b.txt", b"x")


def test_list_never_yields_keys_outside_the_bucket(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not in the bucket")

    try:
        keys = [s.key for s in store.list("../")]
    except UnsafeName:
        keys = []

    assert keys == []


@pytest.mark.parametrize("key", ["../outside.txt", "runs/../../outside.txt"])
def test_an_escaping_key_writes_nothing_outside_the_bucket(
    store: ArtifactStore, tmp_path: Path, key: str
) -> None:
    for verb in (lambda: put_bytes(store, key, b"x"), lambda: store.append(key, b"x")):
        with pytest.raises(UnsafeName):
            verb()

    assert not (tmp_path / "outside.txt").exists()


def test_key_of_refuses_a_sibling_folder_that_shares_the_roots_name(
    store: ArtifactStore,
) -> None:
    with pytest.raises(BadInput, match="not in this artifact store"):
        store.key_of(store.root_uri + "-other/runs/j/result.json")


@pytest.mark.parametrize("root", ["s3://bucket", "/plain/path", "file:/one/slash"])
def test_an_unknown_artifact_scheme_is_refused_naming_the_supported_ones(root: str) -> None:
    with pytest.raises(BadInput) as caught:
        open_artifacts(root)

    assert root in str(caught.value)
    for scheme in ADAPTERS:
        assert f"{scheme}://" in str(caught.value)

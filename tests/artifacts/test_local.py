"""LocalArtifactStore: a folder as the bucket; atomic writes, streamed reads, names kept inside."""

from __future__ import annotations

import hashlib
import io
import os
import resource
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from ephemerid.artifacts import (
    ADAPTERS,
    MAX_KEY_LENGTH,
    ArtifactStore,
    copy_prefix,
    download,
    get_bytes,
    open_artifacts,
    put_bytes,
    safe_key,
    upload_dir,
)
from ephemerid.errors import BadInput, Conflict, NotFound, UnsafeName

MB = 1024 * 1024


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


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    return tmp_path / "bucket"


@pytest.fixture
def store(bucket: Path) -> ArtifactStore:
    return open_artifacts(f"file://{bucket}")


def files_on_disk(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# --- write and read ------------------------------------------------------------------------


def test_what_is_written_reads_back_the_same(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 1000

    stat = put_bytes(store, "runs/j1/outputs/data.bin", data)

    assert get_bytes(store, "runs/j1/outputs/data.bin") == data
    assert stat.key == "runs/j1/outputs/data.bin"
    assert stat.size == len(data)
    assert stat.sha256 == hashlib.sha256(data).hexdigest()


def test_overwriting_replaces_the_whole_content(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a much longer first version")
    put_bytes(store, "runs/j/a.txt", b"short")

    assert get_bytes(store, "runs/j/a.txt") == b"short"


def test_a_write_that_fails_midway_leaves_no_key_and_no_temp_file(
    store: ArtifactStore, bucket: Path
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"x" * MB
        yield b"y" * MB
        raise OSError("upload connection dropped")

    with pytest.raises(OSError, match="connection dropped"):
        store.write("incoming/train/big.csv", GeneratedStream(chunks()))

    assert store.stat("incoming/train/big.csv") is None
    with pytest.raises(NotFound):
        store.open_read("incoming/train/big.csv")
    assert list(store.list("incoming/")) == []
    assert files_on_disk(bucket) == []


def test_a_failed_overwrite_keeps_the_old_content(store: ArtifactStore, bucket: Path) -> None:
    put_bytes(store, "runs/j/model.pt", b"version one")

    def chunks() -> Iterator[bytes]:
        yield b"partial version two"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store.write("runs/j/model.pt", GeneratedStream(chunks()))

    assert get_bytes(store, "runs/j/model.pt") == b"version one"
    assert files_on_disk(bucket) == ["runs/j/model.pt"]


def test_readers_see_none_of_a_write_in_progress(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/result.json", b'{"old": true}')
    seen_midway: dict[str, object] = {}

    def chunks() -> Iterator[bytes]:
        yield b'{"new": '
        seen_midway["old"] = get_bytes(store, "runs/j/result.json")
        seen_midway["listed"] = [s.key for s in store.list("runs/")]
        seen_midway["fresh"] = store.stat("runs/j/fresh.bin")
        yield b"true}"

    store.write("runs/j/result.json", GeneratedStream(chunks()))
    store.write("runs/j/fresh.bin", GeneratedStream([b"abc"]))

    assert seen_midway == {"old": b'{"old": true}', "listed": ["runs/j/result.json"], "fresh": None}
    assert get_bytes(store, "runs/j/result.json") == b'{"new": true}'


def test_write_if_absent_refuses_an_existing_key_and_keeps_it(
    store: ArtifactStore, bucket: Path
) -> None:
    put_bytes(store, "models/m/1/version.json", b"first claim")

    with pytest.raises(Conflict) as caught:
        put_bytes(store, "models/m/1/version.json", b"second claim", if_absent=True)

    assert store.uri("models/m/1/version.json") in str(caught.value)
    assert get_bytes(store, "models/m/1/version.json") == b"first claim"
    assert files_on_disk(bucket) == ["models/m/1/version.json"]


def test_write_if_absent_creates_a_new_key(store: ArtifactStore) -> None:
    put_bytes(store, "models/m/1/version.json", b"claim", if_absent=True)

    assert get_bytes(store, "models/m/1/version.json") == b"claim"


def test_reading_a_missing_key_is_not_found_naming_its_uri(store: ArtifactStore) -> None:
    with pytest.raises(NotFound) as caught:
        store.open_read("runs/nope/result.json")

    assert store.uri("runs/nope/result.json") in str(caught.value)


def test_reading_a_folder_is_not_found(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    with pytest.raises(NotFound):
        store.open_read("runs/j")


def test_open_read_from_an_offset_skips_that_many_bytes(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/output.log", b"0123456789")

    with store.open_read("runs/j/output.log", offset=4) as stream:
        assert stream.read() == b"456789"
    with store.open_read("runs/j/output.log", offset=10) as stream:
        assert stream.read() == b""


def test_append_creates_then_extends(store: ArtifactStore) -> None:
    store.append("runs/j/metrics.jsonl", b'{"loss": 1}\n')
    store.append("runs/j/metrics.jsonl", b'{"loss": 0.5}\n')

    assert get_bytes(store, "runs/j/metrics.jsonl") == b'{"loss": 1}\n{"loss": 0.5}\n'


def test_stat_gives_the_size_and_an_etag_that_changes_with_the_content(
    store: ArtifactStore,
) -> None:
    assert store.stat("runs/j/a.txt") is None

    first = put_bytes(store, "runs/j/a.txt", b"aaaa")
    same_size = put_bytes(store, "runs/j/a.txt", b"bbbb")
    store.append("runs/j/a.txt", b"c")
    appended_to = store.stat("runs/j/a.txt")

    assert appended_to is not None
    assert (first.size, same_size.size, appended_to.size) == (4, 4, 5)
    assert len({first.etag, same_size.etag, appended_to.etag}) == 3


def test_stat_is_stable_while_the_content_is_unchanged(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"aaaa")

    assert store.stat("runs/j/a.txt") == store.stat("runs/j/a.txt")


def test_delete_removes_a_key_and_ignores_a_missing_one(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    store.delete("runs/j/a.txt")
    store.delete("runs/j/a.txt")

    assert store.stat("runs/j/a.txt") is None


# --- listing -------------------------------------------------------------------------------


def test_list_returns_keys_under_a_prefix_only(store: ArtifactStore) -> None:
    for key in ["runs/a/x.txt", "runs/a/sub/y.txt", "runs/ab/z.txt", "models/a/1/f", "top.txt"]:
        put_bytes(store, key, key.encode())

    assert sorted(s.key for s in store.list("runs/a/")) == ["runs/a/sub/y.txt", "runs/a/x.txt"]
    assert sorted(s.key for s in store.list("runs/a")) == [
        "runs/a/sub/y.txt",
        "runs/a/x.txt",
        "runs/ab/z.txt",
    ]
    assert [s.key for s in store.list("nothing/here/")] == []
    assert {s.key: s.size for s in store.list("runs/a/")} == {
        "runs/a/sub/y.txt": len(b"runs/a/sub/y.txt"),
        "runs/a/x.txt": len(b"runs/a/x.txt"),
    }


def test_list_skips_temp_files_left_by_a_crashed_write(store: ArtifactStore, bucket: Path) -> None:
    put_bytes(store, "runs/j/result.json", b"{}")
    (bucket / "runs/j/.result.json.tmp-0badc0de").write_bytes(b"{half")

    assert [s.key for s in store.list("runs/")] == ["runs/j/result.json"]


def test_names_with_unicode_and_spaces_round_trip(store: ArtifactStore) -> None:
    key = "incoming/train/données de mai 2024 ü 模型.csv"

    put_bytes(store, key, b"a,b\n1,2\n")

    assert get_bytes(store, key) == b"a,b\n1,2\n"
    assert [s.key for s in store.list("incoming/train/")] == [key]
    assert store.key_of(store.uri(key)) == key


def test_list_never_yields_keys_outside_the_bucket(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not in the bucket")

    try:
        keys = [s.key for s in store.list("../")]
    except UnsafeName:
        keys = []

    assert keys == []


# --- names and URIs ------------------------------------------------------------------------


def test_key_of_inverts_uri(store: ArtifactStore) -> None:
    assert store.key_of(store.uri("runs/j/result.json")) == "runs/j/result.json"


@pytest.mark.parametrize(
    "uri",
    ["file:///somewhere/else/runs/j/result.json", "az://runs/j/result.json", "runs/j/result.json"],
)
def test_key_of_refuses_a_uri_from_another_root(store: ArtifactStore, uri: str) -> None:
    with pytest.raises(BadInput, match="not in this artifact store"):
        store.key_of(uri)


def test_key_of_refuses_a_sibling_folder_that_shares_the_roots_name(
    store: ArtifactStore,
) -> None:
    with pytest.raises(BadInput, match="not in this artifact store"):
        store.key_of(store.root_uri + "-other/runs/j/result.json")


@pytest.mark.parametrize("rest", ["../secret.txt", "runs/../../secret.txt", "/etc/passwd", ""])
def test_key_of_refuses_a_uri_that_escapes_the_root(store: ArtifactStore, rest: str) -> None:
    with pytest.raises(UnsafeName, match="artifact URI"):
        store.key_of(f"{store.root_uri}/{rest}")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "empty"),
        ("a" * (MAX_KEY_LENGTH + 1), "longer than"),
        ("runs\\j\\a.txt", "backslash"),
        ("runs/j/\x00a.txt", "control characters"),
        ("runs/j/a\r.txt", "control characters"),
        ("/etc/passwd", "absolute"),
        ("runs/../etc", "'..'"),
        ("..", "'..'"),
        ("runs/./a", "'.'"),
        ("runs//a", "empty path segment"),
        ("runs/a/", "empty path segment"),
    ],
)
def test_safe_key_refuses_names_that_escape_and_says_why(key: str, reason: str) -> None:
    with pytest.raises(UnsafeName, match="refused") as caught:
        safe_key(key)

    assert reason in str(caught.value)


@pytest.mark.parametrize("key", ["runs/j/a.txt", "a", "runs/j/.hidden", "x/y..z/w", "a b/ü"])
def test_safe_key_accepts_names_inside_their_container(key: str) -> None:
    assert safe_key(key) == key


@pytest.mark.parametrize("key", ["../outside.txt", "runs/../../outside.txt", "/tmp/outside"])
def test_every_verb_refuses_an_escaping_key(store: ArtifactStore, tmp_path: Path, key: str) -> None:
    for verb in (
        lambda: put_bytes(store, key, b"x"),
        lambda: store.append(key, b"x"),
        lambda: store.open_read(key),
        lambda: store.stat(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(UnsafeName):
            verb()
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("root", ["s3://bucket", "/plain/path", "file:/one/slash"])
def test_an_unknown_artifact_scheme_is_refused_naming_the_supported_ones(root: str) -> None:
    with pytest.raises(BadInput) as caught:
        open_artifacts(root)

    assert root in str(caught.value)
    for scheme in ADAPTERS:
        assert f"{scheme}://" in str(caught.value)


# --- streaming -----------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def test_a_200_mb_artifact_streams_through_without_being_held_in_memory(
    store: ArtifactStore,
) -> None:
    size_mb = 200
    blocks = [bytes([i]) * MB for i in range(4)]
    expected = hashlib.sha256()
    for i in range(size_mb):
        expected.update(blocks[i % 4])
    before = peak_rss_bytes()

    stat = store.write(
        "incoming/train/big.bin", GeneratedStream(blocks[i % 4] for i in range(size_mb))
    )
    read_back = hashlib.sha256()
    with store.open_read("incoming/train/big.bin") as stream:
        while chunk := stream.read(MB):
            read_back.update(chunk)

    growth = peak_rss_bytes() - before
    assert stat.size == size_mb * MB
    assert stat.sha256 == expected.hexdigest()
    assert read_back.hexdigest() == expected.hexdigest()
    assert growth < 50 * MB, f"peak RSS grew by {growth / MB:.0f} MB"
    store.delete("incoming/train/big.bin")


# --- helpers over the verbs ----------------------------------------------------------------


def test_download_of_a_single_key_lands_under_its_basename(
    store: ArtifactStore, tmp_path: Path
) -> None:
    put_bytes(store, "runs/j/outputs/predictions.csv", b"id,p\n1,0.9\n")

    paths = download(store, "runs/j/outputs/predictions.csv", tmp_path / "out")

    assert paths == [tmp_path / "out" / "predictions.csv"]
    assert paths[0].read_bytes() == b"id,p\n1,0.9\n"


@pytest.mark.parametrize(
    "prefix",
    [
        "runs/j/outputs",
        pytest.param(
            "runs/j/outputs/",
        ),
    ],
)
def test_download_of_a_prefix_recreates_its_tree(
    store: ArtifactStore, tmp_path: Path, prefix: str
) -> None:
    tree = {"runs/j/outputs/a.txt": b"a", "runs/j/outputs/model/w.bin": b"w" * 1000}
    for key, data in tree.items():
        put_bytes(store, key, data)
    put_bytes(store, "runs/j/outputs-old/stale.txt", b"not mine")
    out = tmp_path / "out"

    paths = download(store, prefix, out)

    assert sorted(p.relative_to(out).as_posix() for p in paths) == ["a.txt", "model/w.bin"]
    assert files_on_disk(out) == ["a.txt", "model/w.bin"]
    assert (out / "model/w.bin").read_bytes() == b"w" * 1000


def test_download_of_an_empty_prefix_fetches_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    assert download(store, "runs/none", tmp_path / "out") == []


def test_upload_dir_then_copy_prefix_copies_every_file(
    store: ArtifactStore, tmp_path: Path
) -> None:
    local = tmp_path / "model"
    (local / "sub dir").mkdir(parents=True)
    (local / "weights.bin").write_bytes(os.urandom(4096))
    (local / "sub dir" / "config.json").write_text('{"layers": 3}')

    uploaded = upload_dir(store, local, "runs/j/outputs/model")
    copied = copy_prefix(store, "runs/j/outputs/model", "models/m/1/files")

    assert uploaded == [
        "runs/j/outputs/model/sub dir/config.json",
        "runs/j/outputs/model/weights.bin",
    ]
    assert sorted(copied) == [
        "models/m/1/files/sub dir/config.json",
        "models/m/1/files/weights.bin",
    ]
    for name in ("weights.bin", "sub dir/config.json"):
        assert get_bytes(store, f"models/m/1/files/{name}") == (local / name).read_bytes()
        assert get_bytes(store, f"runs/j/outputs/model/{name}") == (local / name).read_bytes()

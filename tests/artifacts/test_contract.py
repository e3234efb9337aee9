"""The ArtifactStore contract, run against every adapter: a local folder and Blob Storage (Azurite).

Each test runs once per adapter, so an adapter that drifts from the others fails here.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifacts.streams import MB, GeneratedStream
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
from ephemerid.artifacts.blob import BlobArtifactStore
from ephemerid.errors import BadInput, Conflict, NotFound, UnsafeName

SCHEMES = {"local": "file", "blob": "az"}
STREAMS = Path(__file__).with_name("streams.py")


@pytest.fixture(params=sorted(SCHEMES))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(adapter: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings the adapter reads: none locally, the Azurite connection for Blob Storage."""
    if adapter == "local":
        return {}
    return {"EPHEMERID_STORAGE": request.getfixturevalue("azurite_connection")}


@pytest.fixture
def store(adapter: str, env: dict[str, str], tmp_path: Path) -> Iterator[ArtifactStore]:
    """An empty bucket: a fresh folder, or the Azurite account with every container deleted."""
    if adapter == "local":
        yield open_artifacts(f"file://{tmp_path / 'bucket'}", env)
        return
    opened = open_artifacts("az://", env)
    assert isinstance(opened, BlobArtifactStore)
    for container in opened.client.list_containers():
        opened.client.delete_container(container.name)
    yield opened
    opened.client.close()


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_every_registered_adapter_runs_this_contract() -> None:
    assert sorted(ADAPTERS) == sorted(SCHEMES.values())


# --- write and read ------------------------------------------------------------------------


def test_what_is_written_reads_back_the_same(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 1000

    stat = put_bytes(store, "runs/j1/outputs/data.bin", data)

    assert get_bytes(store, "runs/j1/outputs/data.bin") == data
    assert stat.key == "runs/j1/outputs/data.bin"
    assert stat.size == len(data)
    assert stat.sha256 == hashlib.sha256(data).hexdigest()


def test_the_sha256_of_a_streamed_multi_block_write_is_that_of_its_content(
    store: ArtifactStore,
) -> None:
    chunks = [os.urandom(MB + 7) for _ in range(5)]  # over one 4 MB block, odd chunk sizes

    stat = store.write("incoming/train/a.bin", GeneratedStream(chunks))

    assert stat.sha256 == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert stat.size == sum(len(c) for c in chunks)
    assert get_bytes(store, "incoming/train/a.bin") == b"".join(chunks)


def test_an_empty_artifact_reads_back_empty(store: ArtifactStore) -> None:
    stat = put_bytes(store, "runs/j/empty.txt", b"")

    assert get_bytes(store, "runs/j/empty.txt") == b""
    assert (stat.size, stat.sha256) == (0, hashlib.sha256(b"").hexdigest())


def test_overwriting_replaces_the_whole_content(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a much longer first version")
    put_bytes(store, "runs/j/a.txt", b"short")

    assert get_bytes(store, "runs/j/a.txt") == b"short"


def test_a_write_into_a_container_that_does_not_exist_yet_works(store: ArtifactStore) -> None:
    put_bytes(store, "fresh/deep/er/a.txt", b"made")

    assert get_bytes(store, "fresh/deep/er/a.txt") == b"made"


def test_a_write_that_fails_midway_leaves_no_key(store: ArtifactStore) -> None:
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


def test_a_failed_overwrite_keeps_the_old_content(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/model.pt", b"version one")

    def chunks() -> Iterator[bytes]:
        yield b"partial version two"
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store.write("runs/j/model.pt", GeneratedStream(chunks()))

    assert get_bytes(store, "runs/j/model.pt") == b"version one"
    assert [s.key for s in store.list("runs/")] == ["runs/j/model.pt"]


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


def test_a_write_racing_another_of_the_same_key_ends_with_one_whole_version(
    store: ArtifactStore, request: pytest.FixtureRequest
) -> None:

    def chunks() -> Iterator[bytes]:
        yield b"b" * (5 * MB)  # more than a block: part of this write is uploaded already
        put_bytes(store, "runs/j/job.json", b"the other writer")
        yield b"b" * MB

    store.write("runs/j/job.json", GeneratedStream(chunks()))

    assert get_bytes(store, "runs/j/job.json") == b"b" * (6 * MB)


def test_of_two_racing_if_absent_writes_the_first_to_finish_wins(store: ArtifactStore) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"b" * (5 * MB)
        put_bytes(store, "models/m/1/version.json", b"first to finish", if_absent=True)
        yield b"b" * MB

    with pytest.raises(Conflict):
        store.write("models/m/1/version.json", GeneratedStream(chunks()), if_absent=True)

    assert get_bytes(store, "models/m/1/version.json") == b"first to finish"


def test_write_if_absent_refuses_an_existing_key_naming_it_and_keeps_it(
    store: ArtifactStore,
) -> None:
    put_bytes(store, "models/m/1/version.json", b"first claim")

    with pytest.raises(Conflict) as caught:
        put_bytes(store, "models/m/1/version.json", b"second claim", if_absent=True)

    assert store.uri("models/m/1/version.json") in str(caught.value)
    assert get_bytes(store, "models/m/1/version.json") == b"first claim"
    assert [s.key for s in store.list("models/")] == ["models/m/1/version.json"]


def test_write_if_absent_creates_a_new_key(store: ArtifactStore) -> None:
    stat = put_bytes(store, "models/m/1/version.json", b"claim", if_absent=True)

    assert get_bytes(store, "models/m/1/version.json") == b"claim"
    assert stat.sha256 == hashlib.sha256(b"claim").hexdigest()


@pytest.mark.parametrize("key", ["runs/nope/result.json", "nothing/at/all.txt"])
def test_reading_a_missing_key_is_not_found_naming_its_uri(store: ArtifactStore, key: str) -> None:
    for offset in (0, 3):
        with pytest.raises(NotFound) as caught:
            store.open_read(key, offset)

        assert store.uri(key) in str(caught.value)


def test_reading_a_folder_is_not_found(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    with pytest.raises(NotFound):
        store.open_read("runs/j")


def test_open_read_from_an_offset_skips_that_many_bytes(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/output.log", b"0123456789")

    for offset, rest in [(0, b"0123456789"), (4, b"456789"), (9, b"9"), (10, b""), (11, b"")]:
        with store.open_read("runs/j/output.log", offset=offset) as stream:
            assert stream.read() == rest, offset


def test_open_read_streams_in_chunks(store: ArtifactStore) -> None:
    data = os.urandom(9 * MB + 5)
    put_bytes(store, "runs/j/w.bin", data)

    with store.open_read("runs/j/w.bin", offset=MB) as stream:
        chunks = list(iter(lambda: stream.read(MB // 2), b""))

    assert b"".join(chunks) == data[MB:]
    assert max(len(c) for c in chunks) <= MB // 2


# --- append --------------------------------------------------------------------------------


def test_append_creates_then_extends(store: ArtifactStore) -> None:
    store.append("runs/j/metrics.jsonl", b'{"loss": 1}\n')
    store.append("runs/j/metrics.jsonl", b'{"loss": 0.5}\n')

    assert get_bytes(store, "runs/j/metrics.jsonl") == b'{"loss": 1}\n{"loss": 0.5}\n'
    with store.open_read("runs/j/metrics.jsonl", offset=12) as stream:
        assert stream.read() == b'{"loss": 0.5}\n'


def test_append_to_an_artifact_that_write_made_extends_it_or_says_it_cannot(
    store: ArtifactStore, adapter: str
) -> None:
    # Blob Storage cannot append to a block blob; the Protocol says so, and ephemerid only
    # appends to logs it appends from the start.
    put_bytes(store, "runs/j/output.log", b"written whole\n")

    if adapter == "blob":
        with pytest.raises(Conflict, match=r"runs/j/output\.log"):
            store.append("runs/j/output.log", b"appended\n")
        assert get_bytes(store, "runs/j/output.log") == b"written whole\n"
    else:
        store.append("runs/j/output.log", b"appended\n")
        assert get_bytes(store, "runs/j/output.log") == b"written whole\nappended\n"


# --- stat and delete -----------------------------------------------------------------------


def test_stat_gives_the_size_and_an_etag_that_changes_with_the_content(
    store: ArtifactStore,
) -> None:
    assert store.stat("runs/j/a.txt") is None

    first = put_bytes(store, "runs/j/a.txt", b"aaaa")
    same_size = put_bytes(store, "runs/j/a.txt", b"bbbb")
    stat = store.stat("runs/j/a.txt")

    assert stat is not None
    assert (first.size, same_size.size, stat.size) == (4, 4, 4)
    assert first.etag != same_size.etag
    assert (stat.key, stat.etag) == ("runs/j/a.txt", same_size.etag)


def test_appending_changes_the_size_and_the_etag(store: ArtifactStore) -> None:
    store.append("runs/j/log.txt", b"abc")
    before = store.stat("runs/j/log.txt")
    store.append("runs/j/log.txt", b"d")
    after = store.stat("runs/j/log.txt")

    assert before is not None and after is not None
    assert (before.size, after.size) == (3, 4)
    assert before.etag != after.etag


def test_stat_is_stable_while_the_content_is_unchanged(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"aaaa")

    assert store.stat("runs/j/a.txt") == store.stat("runs/j/a.txt")


@pytest.mark.parametrize("key", ["runs/j", "runs", "nothing/here.txt"])
def test_stat_of_a_folder_a_container_or_a_missing_key_is_none(
    store: ArtifactStore, adapter: str, request: pytest.FixtureRequest, key: str
) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    assert store.stat(key) is None


def test_delete_removes_a_key_and_ignores_a_missing_one(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")
    put_bytes(store, "runs/j/b.txt", b"b")

    store.delete("runs/j/a.txt")
    store.delete("runs/j/a.txt")
    store.delete("nothing/at/all.txt")

    assert store.stat("runs/j/a.txt") is None
    assert [s.key for s in store.list("runs/")] == ["runs/j/b.txt"]


# --- listing -------------------------------------------------------------------------------


def test_list_returns_keys_under_a_prefix_only_nested_ones_included(store: ArtifactStore) -> None:
    for key in ["runs/a/x.txt", "runs/a/sub/y.txt", "runs/ab/z.txt", "models/a/1/f"]:
        put_bytes(store, key, key.encode())

    assert sorted(s.key for s in store.list("runs/a/")) == ["runs/a/sub/y.txt", "runs/a/x.txt"]
    assert sorted(s.key for s in store.list("runs/a")) == [
        "runs/a/sub/y.txt",
        "runs/a/x.txt",
        "runs/ab/z.txt",
    ]
    assert sorted(s.key for s in store.list("runs/")) == [
        "runs/a/sub/y.txt",
        "runs/a/x.txt",
        "runs/ab/z.txt",
    ]
    assert [s.key for s in store.list("runs/nothing/")] == []
    assert {s.key: s.size for s in store.list("runs/a/")} == {
        "runs/a/sub/y.txt": len(b"runs/a/sub/y.txt"),
        "runs/a/x.txt": len(b"runs/a/x.txt"),
    }


def test_listing_a_container_that_does_not_exist_yet_is_empty(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    assert list(store.list("nothing/")) == []
    assert list(store.list("nothing/here/")) == []


def test_list_gives_the_same_stat_as_stat(store: ArtifactStore) -> None:
    put_bytes(store, "runs/j/a.txt", b"aaaa")

    (listed,) = store.list("runs/j/")
    stat = store.stat("runs/j/a.txt")

    assert stat is not None
    assert (listed.key, listed.size, listed.etag) == (stat.key, stat.size, stat.etag)


@pytest.mark.parametrize("prefix", ["run", "ru"])
def test_a_prefix_that_ends_inside_a_container_name_lists_that_container(
    store: ArtifactStore, request: pytest.FixtureRequest, prefix: str
) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    assert [s.key for s in store.list(prefix)] == ["runs/j/a.txt"]


# --- names and URIs ------------------------------------------------------------------------


NAMES = [
    "incoming/train/données de mai 2024 ü 模型.csv",
    "runs/j/outputs/100% done #1?.txt",
    "runs/j/outputs/a+b=c&d;e,f'g.txt",
]


@pytest.mark.parametrize("key", NAMES)
def test_names_with_unicode_spaces_and_url_characters_round_trip(
    store: ArtifactStore, key: str
) -> None:
    put_bytes(store, key, b"a,b\n1,2\n")

    assert get_bytes(store, key) == b"a,b\n1,2\n"
    assert [s.key for s in store.list(key.rsplit("/", 1)[0] + "/")] == [key]
    stat = store.stat(key)
    assert stat is not None and stat.key == key
    assert store.key_of(store.uri(key)) == key
    store.delete(key)
    assert store.stat(key) is None


def test_key_of_inverts_uri(store: ArtifactStore) -> None:
    assert store.key_of(store.uri("runs/j/result.json")) == "runs/j/result.json"
    assert store.uri("runs/j/result.json").startswith(store.root_uri)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/runs/j/result.json",
        "https://acct.blob.core.windows.net/runs/j/result.json",
        "runs/j/result.json",
        "other-adapter",
    ],
)
def test_key_of_refuses_a_uri_from_another_store(store: ArtifactStore, uri: str) -> None:
    if uri == "other-adapter":
        uri = "file:///somewhere/runs/j/result.json" if store.root_uri == "az://" else "az://r/a"
    with pytest.raises(BadInput, match="not in this artifact store"):
        store.key_of(uri)


@pytest.mark.parametrize("rest", ["../secret.txt", "runs/../../secret.txt", "/etc/passwd", ""])
def test_key_of_refuses_a_uri_that_escapes_the_root(store: ArtifactStore, rest: str) -> None:
    with pytest.raises(UnsafeName, match="artifact URI"):
        store.key_of(store.uri(rest))


@pytest.mark.parametrize("key", ["../outside.txt", "runs/../../outside.txt", "/tmp/outside"])
def test_every_verb_refuses_an_escaping_key(store: ArtifactStore, key: str) -> None:
    for verb in (
        lambda: put_bytes(store, key, b"x"),
        lambda: store.append(key, b"x"),
        lambda: store.open_read(key),
        lambda: store.stat(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(UnsafeName):
            verb()


@pytest.mark.parametrize("prefix", ["../", "../outside.txt", "runs/../../"])
def test_listing_an_escaping_prefix_is_refused(
    store: ArtifactStore, request: pytest.FixtureRequest, prefix: str
) -> None:
    put_bytes(store, "runs/j/a.txt", b"a")

    with pytest.raises(UnsafeName):
        list(store.list(prefix))


def test_a_key_without_a_container_is_refused(
    store: ArtifactStore, request: pytest.FixtureRequest
) -> None:
    with pytest.raises(BadInput, match="container"):
        put_bytes(store, "top.txt", b"x")


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


# --- helpers over the verbs ----------------------------------------------------------------


def test_download_of_a_single_key_lands_under_its_basename(
    store: ArtifactStore, tmp_path: Path
) -> None:
    put_bytes(store, "runs/j/outputs/predictions.csv", b"id,p\n1,0.9\n")

    paths = download(store, "runs/j/outputs/predictions.csv", tmp_path / "out")

    assert paths == [tmp_path / "out" / "predictions.csv"]
    assert paths[0].read_bytes() == b"id,p\n1,0.9\n"


@pytest.mark.parametrize("prefix", ["runs/j/outputs", "runs/j/outputs/"])
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
    assert files_in(out) == ["a.txt", "model/w.bin"]
    assert (out / "model/w.bin").read_bytes() == b"w" * 1000


@pytest.mark.parametrize("prefix", ["models", "models/"])
def test_download_of_a_whole_container_recreates_its_tree(
    store: ArtifactStore, tmp_path: Path, request: pytest.FixtureRequest, prefix: str
) -> None:
    put_bytes(store, "models/m/1/w.bin", b"w")
    put_bytes(store, "runs/j/a.txt", b"not mine")

    paths = download(store, prefix, tmp_path / "out")

    assert [p.relative_to(tmp_path / "out").as_posix() for p in paths] == ["m/1/w.bin"]


def test_download_of_an_empty_prefix_fetches_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    assert download(store, "runs/none", tmp_path / "out") == []
    assert download(store, "nothing/here/", tmp_path / "out") == []


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


# --- streaming -----------------------------------------------------------------------------


def test_a_200_mb_artifact_streams_through_without_being_held_in_memory(
    store: ArtifactStore, env: dict[str, str]
) -> None:
    size_mb = 200

    done = subprocess.run(
        [sys.executable, str(STREAMS), store.root_uri, str(size_mb)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["written_size"] == report["read_size"] == size_mb * MB
    assert report["written_sha256"] == report["read_sha256"] == report["expected_sha256"]
    growth = report["peak_rss_growth"]
    assert growth < 64 * MB, f"peak RSS grew by {growth / MB:.0f} MB for a {size_mb} MB artifact"

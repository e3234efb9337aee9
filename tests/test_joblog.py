"""What the runner streams while a job runs: here the metrics pump, on the local bucket (and on
Blob Storage through Azurite, where the file is an append blob as the log is)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemerid import sandbox
from ephemerid.artifacts import ArtifactStore, get_bytes, open_artifacts
from ephemerid.artifacts.blob import BlobArtifactStore
from ephemerid.joblog import MetricsPump
from ephemerid.track import Metric


def store_at(tmp_path: Path) -> ArtifactStore:
    return open_artifacts(f"file://{tmp_path / 'bucket'}")


def pump_for(
    tmp_path: Path, limit: int = 1 << 20, store: ArtifactStore | None = None
) -> tuple[MetricsPump, Path, ArtifactStore]:
    store, path = store or store_at(tmp_path), tmp_path / "metrics.jsonl"
    key = f"runs/train-{uuid.uuid4().hex[:12]}/metrics.jsonl"  # Azurite is the session's
    return MetricsPump(store, key, path, limit, sandbox.Mask(["s3cr3t-value"])), path, store


@pytest.fixture(params=["local", "blob"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield store_at(tmp_path)
        return
    env = {"EPHEMERID_STORAGE": request.getfixturevalue("azurite_connection")}
    opened = open_artifacts("az://", env)
    assert isinstance(opened, BlobArtifactStore)
    yield opened
    opened.client.close()


def test_each_pump_appends_the_whole_lines_written_since_and_an_unfinished_one_waits(
    tmp_path: Path, bucket: ArtifactStore
) -> None:
    pump, path, store = pump_for(tmp_path, store=bucket)
    pump.pump()  # no file yet: nothing to do
    assert store.stat(pump.key) is None
    first, second = Metric("loss", 0.5, 1).line(), Metric("loss", 0.25, 2).line()

    path.write_text(first + "\n" + second[:10])
    pump.pump()
    assert get_bytes(store, pump.key).decode() == first + "\n"
    with path.open("a") as out:
        out.write(second[10:] + "\n")
    pump.pump()

    assert get_bytes(store, pump.key).decode() == f"{first}\n{second}\n"
    assert pump.latest.values() == {"loss": 0.25}


def test_lines_past_the_limit_are_not_kept_but_still_count_for_the_summary(
    tmp_path: Path,
) -> None:
    lines = [Metric("loss", v / 10, i).line() for i, v in enumerate(range(10))]
    pump, path, store = pump_for(tmp_path, limit=len(lines[0]) * 3 + 3)
    path.write_text("".join(line + "\n" for line in lines))

    pump.pump()

    kept = get_bytes(store, pump.key).decode().splitlines()
    assert kept == lines[: len(kept)] and 1 <= len(kept) <= 3
    assert pump.dropped > 0
    assert pump.latest.values() == {"loss": 0.9}


def test_secrets_are_masked_and_a_file_the_code_starts_again_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    pump, path, store = pump_for(tmp_path)
    path.write_text('{"type": "param", "name": "token", "value": "s3cr3t-value"}\n' * 3)
    pump.pump()
    path.write_text(Metric("acc", 0.9).line() + "\n")  # truncated and written again
    pump.pump()

    text = get_bytes(store, pump.key).decode()
    assert "s3cr3t-value" not in text and text.count('"***"') == 3
    assert pump.latest.values() == {"acc": 0.9}


def test_a_link_in_place_of_the_file_is_not_followed(tmp_path: Path) -> None:
    pump, path, store = pump_for(tmp_path)
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text(Metric("stolen", 1.0).line() + "\n")
    path.symlink_to(elsewhere)

    pump.pump()

    assert store.stat(pump.key) is None

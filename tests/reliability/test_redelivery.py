"""Blob events delivered twice, by two different processes at once, provision each job once.

Four OS processes (multiprocessing, spawn) share one job store (SQLite, or Table Storage on
Azurite) and one bucket. Each of 100 uploads is delivered twice, by two different processes
picked at random, and each process takes its deliveries in a shuffled order near the other's,
so both deliveries of a blob are often handled at the same moment. Every delivery goes through
the real intake (``Intake.blob``: the rules, ``submit``, staging, the store's compare-and-swap,
``provision``). Only the compute is ours to count: ``RecordingCompute`` writes one file per
provision, so a duplicate provision in any process shows up on disk. A delivery whose handler
raises is delivered again, as the platform would, and the error is kept for the report.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ephemerid.artifacts import open_artifacts, put_bytes
from ephemerid.compute import ComputeStatus, Handle
from ephemerid.intake import Intake
from ephemerid.record import JobRecord, JobState
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.store import open_store

WORKERS = 4
BLOBS = 100  # each delivered twice: 200 events
ATTEMPTS = 5  # deliveries of one event whose handler raised, as the platform retries
JOIN_S = 120.0

RULES = """
rules:
  - name: train-on-upload
    blob: incoming/data/{name}.csv
    job:
      kind: train
      name: train-{name}
      code: ./code
      entrypoint: job.py
      inputs: {data: "{uri}"}
"""


class RecordingCompute:
    """A ComputeBackend that rents nothing and writes one file per provision, in any process."""

    name = "local"

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def check(self, spec: JobSpec) -> None:
        """Runs anything."""

    def provision(self, job: JobRecord) -> Handle:
        (self.folder / f"{job.id}.{os.getpid()}.{uuid.uuid4().hex}").touch()
        return Handle(self.name, job.id, {"pid": os.getpid()})

    def poll(self, handle: Handle) -> ComputeStatus:
        return ComputeStatus.RUNNING

    def teardown(self, handle: Handle) -> bool:
        return True

    def list_owned(self) -> list[Handle]:
        return []

    def close(self) -> None:
        """Nothing held."""


def service_on(root: Path, store_url: str, storage: dict[str, str]) -> Service:
    settings = Settings.from_env({}, home=root / "home", rules_path=root / "ephemerid.yaml")
    artifacts = open_artifacts(f"file://{root / 'bucket'}")
    compute = RecordingCompute(root / "provisions")
    return Service(open_store(store_url, storage), artifacts, {"local": compute}, settings)


def deliver(
    worker: int,
    root: Path,
    store_url: str,
    storage: dict[str, str],
    events: list[tuple[str, str]],
    start: Any,
) -> None:
    """One worker process: its deliveries through the real intake; errors written for the test."""
    service = service_on(root, store_url, storage)
    intake = Intake(service, Rules.load(root / "ephemerid.yaml"))
    errors = []
    start.wait()
    for key, etag in events:
        for _ in range(ATTEMPTS):
            try:
                intake.blob(key, etag)
                break
            except Exception as exc:  # the handler raised: the platform delivers it again
                errors.append(f"{key}: {type(exc).__name__}: {exc}")
    service.close()
    (root / f"worker-{worker}.json").write_text(json.dumps(errors))


def deliveries(events: list[tuple[str, str]], seed: int) -> list[list[tuple[str, str]]]:
    """Each event to two different workers, each worker's share shuffled near the other's."""
    rng = random.Random(seed)
    shares: list[list[tuple[float, tuple[str, str]]]] = [[] for _ in range(WORKERS)]
    for i, event in enumerate(events):
        for worker in rng.sample(range(WORKERS), 2):
            shares[worker].append((i + rng.uniform(-4, 4), event))
    return [[event for _, event in sorted(share)] for share in shares]


@pytest.fixture(params=["sqlite", "table"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str]]:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'home' / 'jobs.db'}", {}
    connection = request.getfixturevalue("azurite_connection")
    return f"table://redelivery{uuid.uuid4().hex[:12]}", {"EPHEMERID_STORAGE": connection}


def test_200_blob_events_half_redelivered_across_4_processes_provision_each_job_once(
    store_url: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, storage = store_url
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "job.py").write_text("print('trained')\n")
    (tmp_path / "ephemerid.yaml").write_text(RULES)
    (tmp_path / "provisions").mkdir()
    artifacts = open_artifacts(f"file://{tmp_path / 'bucket'}")
    keys = [f"incoming/data/d{i:03}.csv" for i in range(BLOBS)]
    events = []
    for key in keys:
        put_bytes(artifacts, key, b"a,b\n1,2\n")
        stat = artifacts.stat(key)
        assert stat is not None
        events.append((key, stat.etag))
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(WORKERS)
    workers = [
        spawn.Process(target=deliver, args=(n, tmp_path, url, storage, share, start))
        for n, share in enumerate(deliveries(events, seed=14))
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(JOIN_S)
    for process in workers:
        if process.is_alive():
            process.kill()

    assert [p.exitcode for p in workers] == [0] * WORKERS
    errors = [
        e for n in range(WORKERS) for e in json.loads((tmp_path / f"worker-{n}.json").read_text())
    ]
    provisions = Counter(p.name.split(".")[0] for p in (tmp_path / "provisions").iterdir())
    checker = service_on(tmp_path, url, storage)
    jobs = checker.list()
    rejected = checker.rejections()
    checker.close()
    assert rejected == []
    assert len(jobs) == BLOBS
    assert {j.state for j in jobs} == {JobState.RUNNING}
    assert sorted(provisions) == sorted(j.id for j in jobs)
    duplicates = {job: n for job, n in provisions.items() if n > 1}
    assert duplicates == {}, f"provisioned more than once: {duplicates}"
    assert errors == [], f"{len(errors)} deliveries raised (and were delivered again): {errors[:3]}"

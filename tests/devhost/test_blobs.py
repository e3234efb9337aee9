"""Files in the bucket reach the blob functions: a dropped file makes a job, its result ends it."""

from __future__ import annotations

from devhost.conftest import MakeHost
from drive import log_of, upload
from ephemerid.devhost.blobs import BlobPattern
from ephemerid.record import ComputeState, JobRecord, JobState


def finished(host_jobs: list[JobRecord]) -> bool:
    return bool(host_jobs) and all(
        j.state.terminal and j.compute_state in (ComputeState.NONE, ComputeState.RELEASED)
        for j in host_jobs
    )


def test_a_file_in_the_bucket_makes_a_job_whose_result_completes_it_and_releases_compute(
    make_host: MakeHost,
) -> None:
    host = make_host()
    store = host.service.store
    upload(host.service.artifacts, "incoming/train/day1.csv", b"a,b\n1,2\n")

    assert host.run(until=lambda: finished(store.list()), timeout=60)

    [job] = store.list()
    assert (job.state, job.compute_state) == (JobState.SUCCEEDED, ComputeState.RELEASED)
    assert job.source == "blob incoming/train/day1.csv (rule train-on-upload)"
    assert "trained on ['data']" in log_of(host.service, job.id)
    calls = [(c.function, c.detail, c.ok) for c in host.invocations]
    assert calls == [
        ("on_blob_created", "incoming/train/day1.csv", True),
        ("on_run_result", f"runs/{job.id}/result.json", True),
    ]


def test_a_blob_is_delivered_once_it_has_settled_and_again_only_when_it_changes(
    make_host: MakeHost,
) -> None:
    host = make_host()
    artifacts = host.service.artifacts
    upload(artifacts, "incoming/notes/a.txt", b"v1")  # matches the trigger, not a rule

    host.poll()
    assert host.invocations == []  # seen once: it may still be being written
    host.poll()
    host.poll()
    assert [c.detail for c in host.invocations] == ["incoming/notes/a.txt"]

    upload(artifacts, "incoming/notes/a.txt", b"version 2")
    host.poll()
    host.poll()
    assert [c.detail for c in host.invocations] == ["incoming/notes/a.txt"] * 2
    assert host.service.store.list() == []


def test_blob_trigger_paths_match_any_characters_slashes_included() -> None:
    incoming = BlobPattern("incoming/{name}")
    assert incoming.prefix == "incoming/"
    assert incoming.match("incoming/train/2030/day1.csv") == {"name": "train/2030/day1.csv"}
    assert incoming.match("runs/x/result.json") is None

    results = BlobPattern("runs/{job}/result.json")
    assert results.prefix == "runs/"
    assert results.match("runs/train-1a/result.json") == {"job": "train-1a"}
    assert results.match("runs/train-1a/output.log") is None
    assert results.match("runs/train-1a/outputs/result.json") == {"job": "train-1a/outputs"}

"""A submit cut short between storing the job and writing its launch is finished, not lost.

A crash there leaves an ACCEPTED record and no ``runs/<job>/job.json``. The redelivered event, or
the reaper once the job is stale, writes the launch from the stored spec and starts the job; a job
whose launch cannot be written any more fails saying why, and no compute is rented for it.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

from drive import finish, spec_for, write_script
from ephemerid import names
from ephemerid.artifacts import get_bytes, put_bytes
from ephemerid.contract import Launch
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for, utcnow
from ephemerid.service import Service
from ephemerid.spec import JobSpec, ModelRef


def cut_short(service: Service, spec: JobSpec, key: str, model_version: str = "") -> JobRecord:
    """The record as a crash right after storing it leaves it: accepted, with no launch."""
    crashed_at = utcnow() - timedelta(minutes=1)  # a redelivery comes after the crash
    record = JobRecord(
        id=job_id_for(spec.kind.value, key),
        key=key,
        spec=spec,
        source="test",
        created_at=crashed_at,
    )
    stored = record.evolve(backend="local", model_version=model_version)
    job, created = service.store.create_if_absent(stored)
    assert created
    assert service.artifacts.stat(names.run_key(job.id, names.JOB_FILE)) is None
    return job


def test_a_redelivery_racing_the_first_delivery_leaves_the_submit_to_it(
    service: Service, code_dir: Path
) -> None:
    spec = spec_for(code_dir, write_script(code_dir, "print('hi')\n"))
    key = "in-flight"
    record = JobRecord(id=job_id_for("train", key), key=key, spec=spec, source="test")
    service.store.create_if_absent(record.evolve(backend="local"))  # its launch not written yet

    again = service.submit(spec, key=key)

    assert (again.created, again.job.state) == (False, JobState.ACCEPTED)
    assert service.artifacts.stat(names.run_key(record.id, names.JOB_FILE)) is None
    assert service.held_compute() == 0


def test_a_redelivery_finishes_a_submit_cut_short_before_its_launch(
    service: Service, code_dir: Path
) -> None:
    spec = spec_for(code_dir, write_script(code_dir, "print('ran after all')\n"))
    job = cut_short(service, spec, "crashed-submit")

    again = service.submit(spec, key="crashed-submit")

    assert not again.created
    assert again.job.id == job.id
    assert again.job.state is not JobState.ACCEPTED
    done = finish(service, job.id)
    assert done.state is JobState.SUCCEEDED, done.reason
    assert service.read_log(job.id).count(b"ran after all") == 1


def test_the_reaper_finishes_a_stale_submit_cut_short_before_its_launch(
    service: Service, code_dir: Path
) -> None:
    spec = spec_for(code_dir, write_script(code_dir, "print('ran after all')\n"))
    job = cut_short(service, spec, "crashed-submit-nobody-redelivered")

    reap(service, utcnow() + timedelta(minutes=2))

    done = finish(service, job.id)
    assert done.state is JobState.SUCCEEDED, done.reason


def test_a_finished_submit_runs_the_model_version_it_was_accepted_with(
    service: Service, code_dir: Path
) -> None:
    for version in (1, 2):
        put_bytes(service.artifacts, f"staged/v{version}/weights.txt", b"w")
        service.models.register("churn", f"staged/v{version}", job_id=f"j{version}", metrics={})
    service.models.promote("churn", 1, "production")
    script = write_script(code_dir, "print('predicted')\n")
    spec = spec_for(code_dir, script, kind="predict", model="churn@production")
    job = cut_short(service, spec, "predict-cut-short", model_version="churn:1")
    service.models.promote("churn", 2, "production")  # the alias moved since it was accepted

    service.submit(spec, key="predict-cut-short")

    key = names.run_key(job.id, names.JOB_FILE)
    launch = Launch.loads(get_bytes(service.artifacts, key), where=key)
    assert launch.model == service.models.resolve(ModelRef.parse("churn:1")).files
    assert finish(service, job.id).state is JobState.SUCCEEDED


def test_a_job_whose_launch_cannot_be_written_fails_and_rents_nothing(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    spec = spec_for(gone, write_script(gone, "print('never')\n"))
    redelivered = cut_short(service, spec, "code-gone-redelivered")
    reaped = cut_short(service, spec, "code-gone-reaped")
    shutil.rmtree(gone)  # the local code folder went away before the launch was written

    service.submit(spec, key="code-gone-redelivered")
    reap(service, utcnow() + timedelta(minutes=2))

    for job in (redelivered, reaped):
        failed = service.get(job.id)
        assert failed.state is JobState.FAILED
        assert "could not stage the job" in failed.reason and str(gone) in failed.reason
        assert failed.compute_state is ComputeState.NONE
        assert failed.compute_requested_at is None
    assert service.backends["local"].list_owned() == []

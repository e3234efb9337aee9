"""Live progress, for real: a job's metrics and start reach storage while it runs.

Jobs run on local compute through the service; the script logs metrics, then holds until the
test opens its gate, so the test reads a job that is still running.
"""

from __future__ import annotations

import json
from pathlib import Path

from drive import Gate, finish, json_lines, spec_for, text_of, wait_for, write_script
from ephemerid import names
from ephemerid.cli.render import idle_s
from ephemerid.reads import Progress, live_json
from ephemerid.record import ComputeState, JobRecord, JobState
from ephemerid.service import Service
from ephemerid.spec import JobSpec

LOGS_THEN_HOLDS = """
import json, os, pathlib, time
from ephemerid import track

gate = pathlib.Path(json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())["gate"])
track.log_metric("loss", 0.5, step=1)
track.log_metric("loss", 0.25, step=2)
track.log_metric("accuracy", 0.75)
print("logged two epochs", flush=True)
deadline = time.monotonic() + 90
while not (gate / "open").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def held_job(code_dir: Path, gate: Gate) -> JobSpec:
    write_script(code_dir, LOGS_THEN_HOLDS)
    return spec_for(code_dir, params=gate.params)


def reported(service: Service, job_id: str) -> tuple[JobRecord, Progress]:
    """The job, once its runner has reported its start and every metric the script logs."""

    def both() -> tuple[JobRecord, Progress] | None:
        job = service.get(job_id)
        progress = service.progress(job)
        seen = progress.metrics.get("loss")
        if progress.started_at and seen and seen.step == 2 and "accuracy" in progress.metrics:
            return job, progress
        return None

    found = wait_for(both, f"job {job_id} to report its start and metrics", timeout=60)
    assert found is not None
    return found


def test_a_running_job_shows_its_start_elapsed_time_and_each_metrics_last_value_and_step(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job_id = service.submit(held_job(code_dir, gate)).job.id

    job, progress = reported(service, job_id)

    assert job.state is JobState.RUNNING
    assert progress.started_at is not None
    assert job.compute_requested_at is not None
    assert progress.started_at >= job.compute_requested_at
    elapsed = progress.elapsed_s(job)
    assert elapsed is not None and elapsed >= 0
    shown = live_json(job, progress)
    assert shown["state"] == "RUNNING"
    assert shown["started_at"] == progress.started_at.isoformat()
    assert shown["runtime_s"] is not None
    assert shown["metrics"] == {"accuracy": 0.75, "loss": 0.25}
    assert shown["progress"]["metrics"]["loss"]["value"] == 0.25
    assert shown["progress"]["metrics"]["loss"]["step"] == 2
    assert shown["progress"]["metrics"]["accuracy"]["step"] is None
    assert shown["progress"]["elapsed_s"] is not None
    json.dumps(shown)  # all of it is JSON

    gate.open()
    done = finish(service, job_id)
    assert done.state is JobState.SUCCEEDED
    assert done.started_at == progress.started_at  # the runner's one start, live and at the end
    assert done.metrics == {"accuracy": 0.75, "loss": 0.25}


def test_a_cancelled_job_keeps_the_metrics_it_logged_and_its_user_time(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job_id = service.submit(held_job(code_dir, gate)).job.id
    _, progress = reported(service, job_id)

    cancelled = service.cancel(job_id)

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.compute_state is ComputeState.RELEASED
    assert cancelled.metrics == {"accuracy": 0.75, "loss": 0.25}
    assert cancelled.started_at == progress.started_at
    assert cancelled.runtime_s is not None and cancelled.runtime_s > 0
    assert cancelled.held_s is not None
    assert idle_s(cancelled) == max(cancelled.held_s - cancelled.runtime_s, 0.0)
    assert idle_s(cancelled) < cancelled.held_s  # the code's time is not idle
    kept = service.progress(cancelled)
    assert kept.metrics["loss"].step == 2
    logged = json_lines(text_of(service.artifacts, names.run_key(job_id, names.METRICS_FILE)))
    assert [(e["name"], e["value"]) for e in logged] == [
        ("loss", 0.5),
        ("loss", 0.25),
        ("accuracy", 0.75),
    ]

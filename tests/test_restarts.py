"""A runner started again for the same job on the same machine (its unit restarted after a reboot,
a redeploy or a crash): it never runs the user's script twice at once, never overwrites a
result, and reruns the job from its checkpoint only as often as the launch allows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from drive import (
    Gate,
    alive,
    held_spec,
    log_of,
    run,
    service_with,
    spec_for,
    text_of,
    wait_for,
    write_script,
)
from ephemerid import names, procs
from ephemerid.artifacts import get_bytes
from ephemerid.contract import Result, RunStatus
from ephemerid.record import JobState
from ephemerid.runner import Runner
from ephemerid.service import Service
from ephemerid.settings import Settings

COUNTED = """
import json, os, pathlib
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
with open(pathlib.Path(params["gate"]) / "runs.txt", "a") as runs:
    runs.write("ran\\n")
"""


def start_runner(service: Service, job_id: str, work: str) -> subprocess.Popen[bytes]:
    """The runner, started again with the command its first start had (as its unit would)."""
    command = [sys.executable, "-m", "ephemerid.runner", "--artifacts"]
    command += [service.settings.artifacts_url, "--job", job_id, "--work-dir", work]
    env = {**os.environ, procs.ENV_MARK: work}  # the test's cleanup finds it by its mark
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


def test_a_runner_started_after_its_jobs_result_is_written_leaves_it_and_runs_nothing(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, COUNTED)
    job = run(service, spec_for(code_dir, params=gate.params))
    key = names.run_key(job.id, names.RESULT_FILE)
    written = text_of(service.artifacts, key)

    again = Runner(service.artifacts, job.id, tmp_path / "node")
    again.run()

    assert text_of(service.artifacts, key) == written
    assert gate.starts() == 1
    assert not again.owner
    assert "this job's result is written already: this start leaves it as it is" in log_of(
        service, job.id
    )


def test_a_runner_started_again_ends_the_last_starts_script_before_it_runs_the_job_again(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job
    first_script = gate.pid()
    os.kill(job.handle["pid"], signal.SIGKILL)  # the runner alone: its script is left running
    wait_for(lambda: not alive(job.handle["pid"]), "the first runner to die")
    assert alive(first_script)
    (gate.path / "pid").unlink()

    second = start_runner(service, job.id, job.handle["workdir"])
    second_script = gate.pid()
    alive_then = alive(first_script)
    gate.open()
    second.wait(timeout=60)

    assert not alive_then  # never two at once
    assert second_script != first_script and gate.starts() == 2
    result = Result.loads(get_bytes(service.artifacts, names.run_key(job.id, names.RESULT_FILE)))
    assert result.status is RunStatus.SUCCEEDED
    log = log_of(service, job.id)
    assert "ended 1 process(es) the last start left running" in log
    assert "started again on this compute (restart 1 of at most 2" in log


def test_a_runner_started_again_more_often_than_allowed_fails_the_job_saying_so(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    with service_with(settings, runner_restarts=0) as service:
        job = service.submit(held_spec(code_dir, gate)).job
        gate.pid()
        os.kill(job.handle["pid"], signal.SIGKILL)
        wait_for(lambda: not alive(job.handle["pid"]), "the first runner to die")

        second = start_runner(service, job.id, job.handle["workdir"])
        second.wait(timeout=60)
        done = service.complete(job.id)

    assert done.state is JobState.FAILED
    assert "the runner was started again 1 time(s) on this compute" in done.reason
    assert "EPHEMERID_RUNNER_RESTARTS" in done.reason
    assert gate.starts() == 1

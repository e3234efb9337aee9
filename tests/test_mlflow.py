"""MLflow, where users already are: each job one MLflow run, in a real local store.

Jobs run for real on local compute; the store is MLflow's own sqlite store in the test's folder,
read back with MlflowClient. A server that refuses (with the credentials it was sent quoted in
its answer) is a real HTTP server on loopback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pydantic import SecretStr

from drive import (
    Gate,
    finish,
    held_spec,
    log_of,
    run,
    service_with,
    spec_for,
    text_of,
    write_script,
)
from ephemerid import names
from ephemerid.contract import Launch, LaunchMlflow, Result, RunStatus
from ephemerid.mlflow_run import JobRun
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service
from ephemerid.settings import Settings

PASSWORD = "pw-9f3c1e7a2b"  # what a tracking URI with credentials carries

BOTH_LOGGERS = """
    import mlflow
    from ephemerid import track

    mlflow.log_metric("direct", 1.5, step=0)
    track.log_metric("loss", 0.5, step=1)
    track.log_metric("loss", 0.25, step=2)
    track.log_param("layers", 3)
    print("logged to both")
"""


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def runs_in(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def result_of(service: Service, job: JobRecord) -> Result:
    key = names.run_key(job.id, names.RESULT_FILE)
    return Result.loads(text_of(service.artifacts, key).encode())


@pytest.fixture
def tracked(settings: Settings, tmp_path: Path) -> Iterator[Service]:
    uri = SecretStr(store_uri(tmp_path))
    with service_with(settings, mlflow_tracking_uri=uri) as service:
        yield service


def test_a_job_is_one_mlflow_run_with_what_mlflow_and_track_logged_and_its_cost_once_settled(
    tracked: Service, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, BOTH_LOGGERS)

    job = run(tracked, spec_for(code_dir, params={"lr": 0.01}), timeout=120)

    assert job.state is JobState.SUCCEEDED, job.reason
    [found] = runs_in(store_uri(tmp_path))
    assert found.info.run_name == job.id
    assert found.info.status == "FINISHED"
    assert found.data.tags["ephemerid.job_id"] == job.id
    assert "ephemerid.sweep_id" not in found.data.tags
    assert found.data.metrics == {"direct": 1.5, "loss": 0.25}
    client = MlflowClient(tracking_uri=store_uri(tmp_path))
    history = client.get_metric_history(found.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]
    assert found.data.params == {"lr": "0.01", "layers": "3"}
    assert found.data.tags["ephemerid.cost_usd"] == "unknown"  # local compute has no price
    assert float(found.data.tags["ephemerid.held_s"]) > 0
    assert found.data.tags["ephemerid.state"] == "SUCCEEDED"
    assert result_of(tracked, job).mlflow_run_id == found.info.run_id
    assert job.metrics == {"loss": 0.25}  # ephemerid's own metrics are as they were


def test_a_failing_jobs_run_ends_failed(tracked: Service, code_dir: Path, tmp_path: Path) -> None:
    write_script(
        code_dir, "from ephemerid import track\ntrack.log_metric('x', 1)\nraise SystemExit(3)\n"
    )

    job = run(tracked, spec_for(code_dir), timeout=120)

    assert job.state is JobState.FAILED
    [found] = runs_in(store_uri(tmp_path))
    assert found.info.status == "FAILED"
    assert found.data.metrics == {"x": 1.0}
    assert found.data.tags["ephemerid.state"] == "FAILED"


def test_a_cancelled_jobs_run_is_ended_killed_and_tagged_by_the_service(
    tracked: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = tracked.submit(held_spec(code_dir, gate)).job
    gate.pid()  # the code runs: its run was made first

    tracked.cancel(job.id)
    job = finish(tracked, job.id)

    assert job.state is JobState.CANCELLED
    [found] = runs_in(store_uri(tmp_path))
    assert found.info.run_name == job.id
    assert found.info.status == "KILLED"
    assert found.data.tags["ephemerid.state"] == "CANCELLED"
    assert "ephemerid.cost_usd" in found.data.tags


def test_a_secret_param_is_not_logged_to_mlflow(
    tracked: Service, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "print('ok')\n")
    spec = spec_for(code_dir, params={"lr": 0.1, "token": "tok-secret-value"})
    spec = spec.model_copy(update={"secret_params": ["token"]})

    job = run(tracked, spec, timeout=120)

    assert job.state is JobState.SUCCEEDED, job.reason
    [found] = runs_in(store_uri(tmp_path))
    assert found.data.params == {"lr": "0.1"}


def test_a_trial_is_tagged_with_its_sweep(tracked: Service, code_dir: Path) -> None:
    write_script(code_dir, "print('ok')\n")
    spec = spec_for(code_dir)
    trial = JobRecord(id="train-trial1", key="k", spec=spec, source="test", parent="sweep-abc")

    tracked.staging.write_launch(trial, tracked.staging.check(spec))

    key = names.run_key(trial.id, names.JOB_FILE)
    launch = Launch.loads(text_of(tracked.artifacts, key).encode())
    assert launch.mlflow is not None
    assert launch.mlflow.tags == {"ephemerid.job_id": trial.id, "ephemerid.sweep_id": "sweep-abc"}


def test_with_no_tracking_uri_nothing_is_written_and_the_job_sees_no_mlflow_variable(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    script = """
        import json, os, pathlib
        from ephemerid import track

        track.log_metric("loss", 0.5)
        seen = sorted(n for n in os.environ if n.startswith("MLFLOW_"))
        out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "seen.json"
        out.write_text(json.dumps(seen))
    """
    write_script(code_dir, script)

    job = run(service, spec_for(code_dir), timeout=120)

    assert job.state is JobState.SUCCEEDED, job.reason
    seen = text_of(service.artifacts, f"{names.run_key(job.id, names.OUTPUTS_DIR)}/seen.json")
    assert json.loads(seen) == []
    assert result_of(service, job).mlflow_run_id is None
    assert "mlflow" not in log_of(service, job.id).lower()
    written = [p for p in tmp_path.rglob("*") if "mlruns" in p.name or p.suffix == ".db"]
    assert [p for p in written if p.name != "jobs.db"] == []


def test_a_runner_without_mlflow_runs_the_job_as_before_and_says_so_once(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    blocked = tmp_path / "no-mlflow"
    (blocked / "mlflow").mkdir(parents=True)
    (blocked / "mlflow" / "__init__.py").write_text("raise ImportError('no mlflow here')\n")
    python = tmp_path / "python-without-mlflow"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={blocked}:$PYTHONPATH exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    write_script(code_dir, "import os\nprint(sorted(n for n in os.environ if 'MLFLOW' in n))\n")
    uri = SecretStr(store_uri(tmp_path))

    with service_with(settings, mlflow_tracking_uri=uri) as service:
        job = run(service, spec_for(code_dir), timeout=120, python=str(python))
        log = log_of(service, job.id)

    assert job.state is JobState.SUCCEEDED, job.reason
    assert log.count("MLflow logging is off: mlflow is not installed") == 1
    assert "[]" in log  # no MLFLOW_* reached the code
    assert runs_in(store_uri(tmp_path)) == []


class Refusing(BaseHTTPRequestHandler):
    """A tracking server that refuses every call, quoting the credentials it was sent."""

    def _refuse(self) -> None:
        sent = self.headers.get("Authorization", "").removeprefix("Basic ")
        said = base64.b64decode(sent).decode() if sent else "nothing"
        body = json.dumps({"error_code": "PERMISSION_DENIED", "message": f"{said} may not"})
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    do_GET = do_POST = do_PATCH = _refuse

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://ephemerid:{PASSWORD}@127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_tracking_uri_with_credentials_never_shows_in_the_log_or_the_record(
    settings: Settings,
    code_dir: Path,
    refusing_server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_script(code_dir, "print('the job runs untracked')\n")
    caplog.set_level(logging.INFO, logger="ephemerid")

    with service_with(settings, mlflow_tracking_uri=SecretStr(refusing_server)) as service:
        job = run(service, spec_for(code_dir), timeout=120)
        log = log_of(service, job.id)
        stored = service.store.get(job.id).dumps()
        result = text_of(service.artifacts, names.run_key(job.id, names.RESULT_FILE))

    assert job.state is JobState.SUCCEEDED, job.reason
    assert "MLflow logging is off: the job's run could not be made" in log
    assert "may not" in log  # the server's answer is there, its credentials masked
    for text in (log, stored, result, caplog.text, repr(settings)):
        assert PASSWORD not in text
        assert refusing_server not in text


def test_track_logs_to_mlflow_and_a_failing_server_costs_one_warning_not_the_job(
    tmp_path: Path, refusing_server: str
) -> None:
    script = "from ephemerid import track\nfor i in range(3): track.log_metric('m', i, step=i)\n"
    metrics = tmp_path / "metrics.jsonl"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": refusing_server,
        names.ENV_METRICS: str(metrics),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }

    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr.count("MLflow logging is off") == 1
    assert len(metrics.read_text().splitlines()) == 3


def test_the_tracking_uri_is_read_from_its_setting_and_never_shown(tmp_path: Path) -> None:
    uri = f"https://ephemerid:{PASSWORD}@mlflow.example.test/"

    settings = Settings.from_env({"EPHEMERID_MLFLOW_TRACKING_URI": uri}, home=tmp_path)

    assert settings.mlflow_tracking_uri.get_secret_value() == uri
    assert PASSWORD not in repr(settings)
    assert Settings.from_env({}, home=tmp_path).mlflow_tracking_uri.get_secret_value() == ""


def test_a_job_run_again_goes_on_in_its_own_run(tmp_path: Path) -> None:
    launch = LaunchMlflow(tracking_uri=store_uri(tmp_path), experiment="ephemerid")
    said: list[str] = []
    first = JobRun(launch, "train-again", said.append)
    first.start({"lr": 0.1}, [])
    first.end(RunStatus.EVICTED)

    again = JobRun(launch, "train-again", said.append)
    env = again.start({"lr": 0.1}, [])
    again.end(RunStatus.SUCCEEDED)

    [found] = runs_in(store_uri(tmp_path))
    assert env["MLFLOW_RUN_ID"] == found.info.run_id == first.run_id
    assert found.info.status == "FINISHED"
    assert any("runs again, in the same run" in line for line in said)


def test_the_specs_mlflow_experiment_name_picks_the_experiment(
    tracked: Service, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "import mlflow\nmlflow.log_metric('m', 2.0)\n")

    job = run(tracked, spec_for(code_dir, env={"MLFLOW_EXPERIMENT_NAME": "mine"}), timeout=120)

    assert job.state is JobState.SUCCEEDED, job.reason
    [found] = runs_in(store_uri(tmp_path))
    client = MlflowClient(tracking_uri=store_uri(tmp_path))
    assert client.get_experiment(found.info.experiment_id).name == "mine"
    assert found.data.metrics == {"m": 2.0}

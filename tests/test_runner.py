"""The runner, for real: jobs run as subprocesses on local compute, through the service."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from drive import (
    Gate,
    alive,
    finish,
    held_spec,
    json_lines,
    log_of,
    run,
    service_with,
    spec_for,
    text_of,
    upload,
    wait_for,
    wait_gone,
    write_script,
)
from ephemerid import names
from ephemerid.record import ComputeState, JobState
from ephemerid.runner import Rank, Runner
from ephemerid.service import Service
from ephemerid.settings import Settings

NASTY = "; rm -rf ~ $(touch {pwned}) `id` | & > < \\ ' \" \n second line\r\n\t\x1b[31m ☃ end"


def test_script_that_exits_zero_succeeds_with_its_log_outputs_and_metrics(
    service: Service, code_dir: Path
) -> None:
    script = """
        import os, pathlib
        from ephemerid import track

        print("hello from the job")
        out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
        (out / "report.txt").write_text("all good")
        (out / "nested" / "deeper").mkdir(parents=True)
        (out / "nested" / "deeper" / "weights.bin").write_bytes(bytes(range(256)))
        track.log_metric("loss", 0.5, step=1)
        track.log_metric("loss", 0.25, step=2)
        track.log_metric("accuracy", 0.9)
        track.log_param("layers", 3)
    """
    write_script(code_dir, script)

    job = run(service, spec_for(code_dir))

    assert job.state is JobState.SUCCEEDED
    assert job.exit_code == 0
    assert job.compute_state is ComputeState.RELEASED
    assert "hello from the job" in log_of(service, job.id)
    outputs = names.run_key(job.id, names.OUTPUTS_DIR)
    assert sorted(job.outputs) == [
        f"{outputs}/nested/deeper/weights.bin",
        f"{outputs}/report.txt",
    ]
    assert text_of(service.artifacts, f"{outputs}/report.txt") == "all good"
    with service.artifacts.open_read(f"{outputs}/nested/deeper/weights.bin") as stream:
        assert stream.read() == bytes(range(256))
    assert job.metrics == {"loss": 0.25, "accuracy": 0.9}
    logged = json_lines(text_of(service.artifacts, names.run_key(job.id, names.METRICS_FILE)))
    metrics = [(e["name"], e["value"]) for e in logged if e["type"] == "metric"]
    assert metrics == [("loss", 0.5), ("loss", 0.25), ("accuracy", 0.9)]
    assert {"type": "param", "name": "layers", "value": 3}.items() <= logged[-1].items()


def test_environment_inputs_params_and_args_reach_the_script_as_data(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    nasty = NASTY.format(pwned=pwned)
    params = {"note": nasty, "lr": 0.1, "layers": [1, 2], "flag": True, "nothing": None}
    args = [nasty, "--lr=$(id)", "*"]
    data = upload(service.artifacts, "incoming/data/rows.csv", b"a,b\n1,2\n")
    script = """
        import json, os, pathlib, sys

        env = {k: v for k, v in os.environ.items() if k.startswith("EPHEMERID_")}
        out = pathlib.Path(env["EPHEMERID_OUTPUT_DIR"])
        seen = {
            "env": env,
            "argv": sys.argv[1:],
            "params_bytes": pathlib.Path(env["EPHEMERID_PARAMS"]).read_bytes().decode(),
            "input": (pathlib.Path(env["EPHEMERID_INPUT_DIR"]) / "data" / "rows.csv").read_text(),
            "dirs": {k: os.path.isdir(v) for k, v in env.items() if k.endswith("_DIR")},
        }
        (out / "seen.json").write_text(json.dumps(seen))
    """
    write_script(code_dir, script)

    job = run(service, spec_for(code_dir, params=params, args=args, inputs={"data": data}))

    assert job.state is JobState.SUCCEEDED, job.reason
    seen = json.loads(text_of(service.artifacts, f"runs/{job.id}/outputs/seen.json"))
    assert json.loads(seen["params_bytes"]) == params
    assert seen["argv"] == args
    assert seen["input"] == "a,b\n1,2\n"
    assert seen["env"]["EPHEMERID_JOB_ID"] == job.id
    dirs = {names.ENV_INPUT_DIR, names.ENV_OUTPUT_DIR, names.ENV_CHECKPOINT_DIR}
    assert set(seen["dirs"]) == dirs | {names.ENV_MODEL_DIR}
    assert all(seen["dirs"].values())
    assert names.ENV_METRICS in seen["env"]
    assert not pwned.exists(), "a param was run as shell text"


def test_crashing_entrypoint_fails_with_its_exit_code_and_last_output(
    service: Service, code_dir: Path
) -> None:
    script = """
        import sys
        print("loading the data", flush=True)
        print("fatal: column 'price' is missing", file=sys.stderr, flush=True)
        sys.exit(3)
    """
    write_script(code_dir, script)

    job = run(service, spec_for(code_dir))

    assert job.state is JobState.FAILED
    assert job.exit_code == 3
    assert "exited with code 3" in job.reason
    assert "fatal: column 'price' is missing" in job.reason
    assert job.compute_state is ComputeState.RELEASED


def test_uncaught_exception_fails_the_job_with_the_traceback_tail(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "raise ValueError('learning rate must be positive')\n")

    job = run(service, spec_for(code_dir))

    assert job.state is JobState.FAILED
    assert job.exit_code == 1
    assert "Traceback (most recent call last)" in job.reason
    assert "learning rate must be positive" in job.reason  # whole: see the test below


def test_a_last_line_written_in_pieces_reaches_the_reason_whole(
    service: Service, code_dir: Path
) -> None:
    script = """
        import sys, time
        for piece in ("ValueError", ": ", "learning rate must be positive"):
            sys.stderr.write(piece)
            sys.stderr.flush()
            time.sleep(0.2)
        sys.exit(1)
    """
    write_script(code_dir, script)

    job = run(service, spec_for(code_dir))

    assert job.state is JobState.FAILED
    assert "ValueError: learning rate must be positive" in job.reason


def test_entrypoint_running_past_max_runtime_is_timed_out_and_stopped(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")  # never opened: the script would hold for 90s

    job = run(service, held_spec(code_dir, gate, compute={"max_runtime": 2}))

    assert job.state is JobState.TIMED_OUT
    assert "max_runtime" in job.reason
    assert "2s" in job.reason
    assert job.compute_state is ComputeState.RELEASED
    assert not alive(gate.pid())
    assert job.runtime_s is not None
    assert 2 <= job.runtime_s < 2 + service.settings.grace_s + 5
    assert "max runtime 2s reached" in log_of(service, job.id)


def test_script_that_ignores_sigterm_is_killed_after_the_grace_period(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    script = f"""
        import os, signal, time

        def ignore(signum, frame):
            print("got SIGTERM, ignoring it", flush=True)

        signal.signal(signal.SIGTERM, ignore)
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        while True:
            time.sleep(0.1)
    """
    write_script(code_dir, script)

    job = run(service, spec_for(code_dir, compute={"max_runtime": 1}))

    grace = service.settings.grace_s
    assert job.state is JobState.TIMED_OUT
    assert "got SIGTERM, ignoring it" in log_of(service, job.id)
    assert job.runtime_s is not None
    assert 1 + grace - 0.5 <= job.runtime_s < 1 + grace + 5
    assert job.exit_code == -9
    wait_gone([int(pidfile.read_text())])


def test_fifty_megabytes_of_output_is_cut_at_the_log_limit_with_a_note(
    settings: Settings, code_dir: Path
) -> None:
    limit = 1024 * 1024
    total = 50 * 1024 * 1024
    script = f"""
        import sys
        line = b"x" * 1023 + b"\\n"
        block = line * 1024
        for _ in range({total} // len(block)):
            sys.stdout.buffer.write(block)
        sys.stdout.flush()
    """
    write_script(code_dir, script)
    with service_with(settings, log_limit_bytes=limit) as service:
        job = run(service, spec_for(code_dir))
        stored = service.artifacts.stat(names.run_key(job.id, names.LOG_FILE))
        log = log_of(service, job.id)

    assert job.state is JobState.SUCCEEDED, job.reason
    assert stored is not None
    assert stored.size <= limit + 200
    note = re.search(r"log truncated at (\d+) bytes; (\d+) more bytes were not kept", log)
    assert note, log[-300:]
    assert int(note.group(1)) == limit
    assert int(note.group(2)) >= total - limit


def test_log_streams_while_the_job_is_still_running(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job

    def log_so_far() -> str:
        if service.artifacts.stat(names.run_key(job.id, names.LOG_FILE)) is None:
            return ""
        log = log_of(service, job.id)
        return log if "holding until the gate opens" in log else ""

    early = wait_for(log_so_far, "the script's first line in the log")
    assert service.store.get(job.id).state is JobState.RUNNING
    assert "gate opened" not in early
    gate.open()

    done = finish(service, job.id)
    assert done.state is JobState.SUCCEEDED
    assert "gate opened: done" in log_of(service, job.id)


def test_input_deleted_before_the_job_runs_fails_it_naming_the_input(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, "print('should not run')\n")
    with service_with(settings, local_slots=1) as service:
        first = service.submit(held_spec(code_dir, gate)).job
        data = upload(service.artifacts, "incoming/data/rows.csv", b"a\n1\n")
        waiting = service.submit(spec_for(code_dir, inputs={"data": data})).job
        assert waiting.state is JobState.WAITING_FOR_CAPACITY
        service.artifacts.delete("incoming/data/rows.csv")
        gate.open()

        finish(service, first.id)
        job = finish(service, waiting.id)
        log = log_of(service, job.id)

    assert job.state is JobState.FAILED
    assert "input 'data'" in job.reason
    assert "rows.csv" in job.reason
    assert "should not run" not in log
    assert job.compute_state is ComputeState.RELEASED


RANKED_SCRIPT = """
    import os, pathlib
    print(f"this is the process of rank {os.environ.get('RANK', '0')}", flush=True)
    out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
    (out / f"from-rank-{os.environ.get('RANK', '0')}.txt").write_text("written")
"""


def test_a_rank_other_than_zero_logs_to_its_own_log_and_leaves_the_result_and_outputs_to_rank_zero(
    service: Service, code_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(code_dir, RANKED_SCRIPT)
    job = run(service, spec_for(code_dir))  # rank 0, as a one-process job is
    result_key = names.run_key(job.id, names.RESULT_FILE)
    result = text_of(service.artifacts, result_key)
    monkeypatch.setenv("RANK", "1")  # what the launcher gives the entrypoint too

    outcome = Runner(service.artifacts, job.id, tmp_path / "node", rank=Rank(1, 2)).run()

    assert outcome.status == "succeeded"
    rank_log = text_of(service.artifacts, names.run_key(job.id, names.log_file(1)))
    assert "(rank 1 of 2)" in rank_log
    assert "this is the process of rank 1" in rank_log
    assert "this is the process of rank 1" not in log_of(service, job.id)
    assert text_of(service.artifacts, result_key) == result
    outputs = names.run_key(job.id, names.OUTPUTS_DIR)
    assert [s.key for s in service.artifacts.list(outputs + "/")] == [f"{outputs}/from-rank-0.txt"]
    assert (tmp_path / "node" / "rank-1" / "output" / "from-rank-1.txt").is_file()


@pytest.mark.parametrize(("rank", "world"), [("2", "2"), ("-1", "2"), ("one", "2"), ("0", "0")])
def test_the_runner_refuses_a_rank_outside_its_world(rank: str, world: str, tmp_path: Path) -> None:
    env = {**os.environ, "RANK": rank, "WORLD_SIZE": world}
    command = [sys.executable, "-m", "ephemerid.runner", "--artifacts", f"file://{tmp_path}"]
    done = subprocess.run(
        [*command, "--job", "train-000000000000"], env=env, capture_output=True, text=True
    )

    assert done.returncode == 2
    assert "RANK" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_metrics_reach_storage_as_they_are_logged_with_secret_params_masked(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    script = """
        import json, os, pathlib, time
        from ephemerid import track

        params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
        track.log_param("token", params["token"])
        track.log_metric("loss", 0.5, step=1)
        gate = pathlib.Path(params["gate"])
        while not (gate / "open").exists():
            time.sleep(0.05)
        track.log_metric("loss", 0.25, step=2)
    """
    write_script(code_dir, script)
    params = {**gate.params, "token": "hunter2-secret-value"}
    spec = spec_for(code_dir, params=params, secret_params=["token"])
    job = service.submit(spec).job
    key = names.run_key(job.id, names.METRICS_FILE)

    def logged() -> list[dict[str, object]]:
        return json_lines(text_of(service.artifacts, key)) if service.artifacts.stat(key) else []

    early = wait_for(lambda: len(logged()) == 2 and logged(), "the first metric in storage")
    assert service.get(job.id).state is JobState.RUNNING
    gate.open()
    done = finish(service, job.id)

    assert early[0]["value"] == "***"
    assert (early[1]["name"], early[1]["value"], early[1]["step"]) == ("loss", 0.5, 1)
    assert "hunter2-secret-value" not in text_of(service.artifacts, key)
    assert [e.get("step") for e in logged()] == [None, 1, 2]
    assert done.metrics == {"loss": 0.25}

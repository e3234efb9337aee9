"""Live progress from the CLI, as a user runs it: `eph status` on a running job, the status line
under `eph submit`'s log, and `eph logs -f --json` one object per line.

Each `eph` is a real subprocess with plain (non-terminal) output; the job's script logs metrics,
then holds until the test opens its gate.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from drive import Gate, wait_for, write_script

EPH = Path(sys.executable).with_name("eph")

LOGS_THEN_HOLDS = """
import json, os, pathlib, time
from ephemerid import track

gate = pathlib.Path(json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())["gate"])
track.log_metric("loss", 0.5, step=1)
track.log_metric("loss", 0.25, step=2)
print("logged two epochs", flush=True)
deadline = time.monotonic() + 90
while not (gate / "open").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("gate opened", flush=True)
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    return {**os.environ, "EPHEMERID_HOME": str(home), "COLUMNS": "300", "NO_COLOR": "1"}


@pytest.fixture
def gate(tmp_path: Path, code_dir: Path) -> Gate:
    write_script(code_dir, LOGS_THEN_HOLDS)
    return Gate(tmp_path / "gate")


def eph(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EPH), *args], capture_output=True, text=True, env=env, timeout=90)


def submit_args(code_dir: Path, gate: Gate) -> list[str]:
    return [
        "submit",
        "--code",
        str(code_dir),
        "--entrypoint",
        "job.py",
        f"--param=gate={gate.path}",
    ]


class Lines:
    """The lines of a running process's stream, read on a thread as they come."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:
            for line in stream:
                self._queue.put(line)

    def until(self, check: Callable[[str], bool], what: str) -> str:
        def found() -> str | None:
            while not self._queue.empty():
                self.seen.append(self._queue.get())
            return next((line for line in self.seen if check(line)), None)

        return wait_for(found, what, timeout=60)  # type: ignore[return-value]

    def rest(self) -> list[str]:
        """Every line, once the process has closed the stream."""
        self._reader.join(timeout=60)
        while not self._queue.empty():
            self.seen.append(self._queue.get())
        return self.seen


@pytest.fixture
def following() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(EPH), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def detached(env: dict[str, str], code_dir: Path, gate: Gate) -> dict[str, Any]:
    done = eph(env, *submit_args(code_dir, gate), "--detach", "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_status_of_a_running_job_shows_its_start_elapsed_time_and_last_metric_and_step(
    env: dict[str, str], code_dir: Path, gate: Gate
) -> None:
    job = detached(env, code_dir, gate)

    def reported() -> dict[str, Any] | None:
        done = eph(env, "status", job["id"], "--json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        loss = shown["progress"]["metrics"].get("loss")
        return shown if loss and loss["step"] == 2 else None

    try:
        shown = wait_for(reported, "eph status to show the metric of the running job", 60)
        text = eph(env, "status", job["id"])
    finally:
        gate.open()
        eph(env, "cancel", job["id"])

    assert shown["state"] == "RUNNING"
    assert shown["started_at"] is not None
    assert shown["runtime_s"] is not None
    assert shown["progress"]["started_at"] == shown["started_at"]
    assert shown["progress"]["elapsed_s"] is not None
    assert shown["metrics"] == {"loss": 0.25}
    assert shown["progress"]["metrics"]["loss"]["value"] == 0.25
    assert "metric loss" in text.stderr and "0.25 (step 2)" in text.stderr
    assert "started_at" in text.stderr and "so far" in text.stderr


def test_submit_shows_a_status_line_with_state_and_metrics_under_the_log(
    env: dict[str, str], code_dir: Path, gate: Gate, following: Callable[..., Any]
) -> None:
    proc = following(env, *submit_args(code_dir, gate))
    out, err = Lines(proc.stdout), Lines(proc.stderr)

    running = err.until(lambda line: "status: RUNNING" in line and "loss=" in line, "a status line")
    gate.open()
    proc.wait(timeout=60)

    assert "loss=0." in running and "(step " in running  # the value the line saw first
    assert proc.returncode == 0, err.rest()
    log = "".join(out.rest())
    assert "logged two epochs" in log and "gate opened" in log
    ended = [line for line in err.rest() if line.startswith("status: SUCCEEDED")]
    assert ended and "loss=0.25 (step 2)" in ended[-1]


def test_logs_follow_json_streams_one_object_per_line_and_ends_with_the_final_state(
    env: dict[str, str], code_dir: Path, gate: Gate, following: Callable[..., Any]
) -> None:
    job = detached(env, code_dir, gate)
    proc = following(env, "logs", "-f", job["id"], "--json")
    out = Lines(proc.stdout)

    out.until(lambda line: '"type": "metric"' in line and '"step": 2' in line, "a metric line")
    gate.open()
    proc.wait(timeout=60)

    objects = [json.loads(line) for line in out.rest()]  # each line is one JSON object
    assert proc.returncode == 0
    assert {o["type"] for o in objects} <= {"log", "metric", "state", "end"}
    assert all(o["job"] == job["id"] for o in objects)
    log = "".join(o["text"] for o in objects if o["type"] == "log")
    assert "logged two epochs" in log and "gate opened" in log
    metrics = [(o["name"], o["value"], o["step"]) for o in objects if o["type"] == "metric"]
    assert metrics == [("loss", 0.5, 1), ("loss", 0.25, 2)]
    states = [o["state"] for o in objects if o["type"] == "state"]
    assert states[0] == "RUNNING" and states[-1] == "SUCCEEDED"
    end = objects[-1]
    assert end["type"] == "end"
    assert end["state"] == "SUCCEEDED" and end["compute_state"] == "released"
    assert end["exit_code"] == 0
    assert end["metrics"] == {"loss": 0.25}
    assert [o["type"] for o in objects].count("end") == 1


@pytest.mark.parametrize("as_json", [False, True])
def test_logs_follow_exits_1_when_the_job_it_follows_fails(
    env: dict[str, str], code_dir: Path, as_json: bool
) -> None:
    write_script(code_dir, "raise SystemExit('no data')", name="fails.py")
    done = eph(env, "submit", "--code", str(code_dir), "--entrypoint", "fails.py", "--detach")
    assert done.returncode == 0, done.stderr
    job_id = done.stderr.split()[1]  # "submitted: <id> <state>"

    followed = eph(env, "logs", "-f", job_id, *(["--json"] if as_json else []))

    assert followed.returncode == 1, followed.stderr
    assert "no data" in followed.stdout


def test_list_shows_a_running_jobs_runtime_and_held_time_so_far(
    env: dict[str, str], code_dir: Path, gate: Gate
) -> None:
    job = detached(env, code_dir, gate)

    def row() -> str | None:
        status = json.loads(eph(env, "status", job["id"], "--json").stdout)
        if status["progress"]["started_at"] is None:
            return None
        listed = eph(env, "list")
        return next((line for line in listed.stderr.splitlines() if job["id"] in line), None)

    try:
        line = wait_for(row, "eph list to show the running job", 60)
    finally:
        gate.open()
        eph(env, "cancel", job["id"])

    assert "RUNNING" in line
    assert line.count("so far") == 2  # runtime and held, not "-"

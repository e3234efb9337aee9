"""Local compute: nothing a job starts outlives its teardown, whatever happened meanwhile.

Real services, real runners and real processes: an ephemerid SIGKILLed between starting the
runner and saving its handle, user code that daemonizes itself, a job that writes past its disk
limit, and a job store that can take no more writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from drive import (
    Gate,
    alive,
    cleaned_up,
    held_spec,
    log_of,
    run,
    service_with,
    spec_for,
    wait_for,
    write_script,
)
from ephemerid.app import build_service
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobState, utcnow
from ephemerid.service import Service
from ephemerid.settings import Settings

# The first half of Service.start, then death: the runner is started, the handle never saved.
CRASH_BEFORE_THE_HANDLE_IS_SAVED = """
import fcntl, json, os, sys, time
from ephemerid import transitions
from ephemerid.app import build_service
from ephemerid.settings import Settings
from ephemerid.spec import validate_spec

settings = Settings.from_env()
service = build_service(settings)
slot = os.open(settings.home / "compute" / "slots" / "0.lock", os.O_CREAT | os.O_RDWR)
fcntl.flock(slot, fcntl.LOCK_EX)  # the one slot is busy: submit stores the job and waits
job = service.submit(validate_spec(json.loads(sys.argv[1])), key="crash").job
os.close(slot)
job, _ = service._transition(job.id, transitions.to_provisioning)
service.backends[job.backend].provision(job)  # the runner runs; its handle is not stored yet
print(job.id, flush=True)
time.sleep(600)  # SIGKILLed here
"""

DAEMON_SCRIPT = """
import json, os, pathlib, shutil, signal, time

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
gate, how = pathlib.Path(params["gate"]), params["daemon"]

def report(name):
    (gate / f"{name}.tmp").write_text(str(os.getpid()))
    os.replace(gate / f"{name}.tmp", gate / name)

if os.fork() == 0:
    if how == "new-process-group":
        os.setpgid(0, 0)
    else:
        os.setsid()
    if how == "setsid-ignoring-sigterm":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if how == "double-fork":  # the classic daemon: no parent, no terminal, a clean environment
        if os.fork() != 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        report("daemon")
        os.execve(shutil.which("sleep"), ["sleep", "120"], {})
    report("daemon")
    time.sleep(120)
    os._exit(0)
report("pid")
deadline = time.monotonic() + 90
while not (gate / "open").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""

DAEMONS = ["fork-setsid", "double-fork", "setsid-ignoring-sigterm", "new-process-group"]

FILL_SCRIPT = """
import os, pathlib, time

with open(pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "big.bin", "wb") as out:
    for _ in range(5):
        out.write(os.urandom(1024 * 1024))
        out.flush()
    os.fsync(out.fileno())
print("wrote 5 MB", flush=True)
time.sleep(30)
"""

# `eph cancel` in a process that may grow no file past ``limit`` bytes: its writes to the job
# store fail as they would on a full disk, while reads and deletes still work.
CANCEL_WITHOUT_ROOM = """
import resource, signal, sys
from ephemerid.cli import main

limit = int(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, nothing more
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["eph", *sys.argv[2:]]
main()
"""


def pid_in(gate: Gate, name: str) -> int:
    path = gate.path / name
    return int(wait_for(lambda: path.exists() and path.read_text(), f"{path} to be written"))


def living(*pids: int) -> list[int]:
    return [pid for pid in pids if alive(pid)]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "EPHEMERID_HOME": str(tmp_path / "home"),
        "EPHEMERID_LOCAL_SLOTS": "1",
        "EPHEMERID_GRACE_S": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@pytest.fixture
def restarted(env: dict[str, str]) -> Iterator[Service]:
    """A fresh ephemerid on the home of ``env``, started when a test first uses it."""
    with cleaned_up(build_service(Settings.from_env(env))) as service:
        yield service


def test_a_runner_started_by_an_ephemerid_that_died_before_saving_its_handle_is_ended(
    env: dict[str, str], code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    spec = held_spec(code_dir, gate)
    with (tmp_path / "crashed.err").open("wb") as err:
        crashed = subprocess.Popen(
            [sys.executable, "-c", CRASH_BEFORE_THE_HANDLE_IS_SAVED, spec.model_dump_json()],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert crashed.stdout is not None
        job_id = crashed.stdout.readline().decode().strip()
        script = gate.pid() if job_id else 0  # the user's code runs
        crashed.kill()
        crashed.wait(timeout=30)
        crashed.stdout.close()
    assert job_id, (tmp_path / "crashed.err").read_text()
    handle = Path(env["EPHEMERID_HOME"]) / "compute" / "jobs" / job_id / "handle.json"
    runner = json.loads(handle.read_text())["pid"]

    with cleaned_up(build_service(Settings.from_env(env))) as fresh:
        stored = fresh.get(job_id)
        assert (stored.state, stored.handle) == (JobState.PROVISIONING, {})
        assert living(runner, script) == [runner, script]

        later = utcnow() + timedelta(seconds=fresh.settings.provision_timeout_s + 60)
        reap(fresh, now=later)  # found by the job id alone: adopted, its work goes on

        adopted = fresh.get(job_id)
        assert (adopted.state, adopted.compute_state) == (JobState.RUNNING, ComputeState.LIVE)
        assert adopted.handle["pid"] == runner
        fresh.end(job_id, JobState.FAILED, "given up by the test")  # teardown by the record

        job = fresh.get(job_id)
        assert (job.state, job.compute_state) == (JobState.FAILED, ComputeState.RELEASED)
        assert living(runner, script) == [], "recorded released while its processes lived"
        assert fresh.held_compute() == 0


def test_a_runner_recorded_released_with_its_work_folder_gone_is_found_and_given_back(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job
    script, runner = gate.pid(), service.get(job.id).handle["pid"]
    # what an unconfirmed teardown used to leave: the record says released, the folder is gone
    stored = service.get(job.id)
    service.store.update(stored.evolve(state=JobState.FAILED, compute_state=ComputeState.RELEASED))
    shutil.rmtree(stored.handle["workdir"])

    assert [h.job_id for h in service.backends["local"].list_owned()] == [job.id]
    actions = reap(service)

    assert f"{job.id}: local compute with job {JobState.FAILED.value} -> torn down" in actions
    assert living(runner, script) == []
    assert service.held_compute() == 0


@pytest.mark.parametrize("daemon", DAEMONS)
@pytest.mark.parametrize("ended_by", ["cancel", "the reaper"])
def test_a_daemon_started_by_the_job_ends_with_it(
    service: Service, code_dir: Path, tmp_path: Path, daemon: str, ended_by: str
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, DAEMON_SCRIPT, "daemon.py")
    params = {**gate.params, "daemon": daemon}
    spec = spec_for(code_dir, "daemon.py", params=params, compute={"max_runtime": 60})
    job = service.submit(spec).job
    script, escaped = gate.pid(), pid_in(gate, "daemon")
    runner = service.get(job.id).handle["pid"]
    assert living(runner, script, escaped) == [runner, script, escaped]

    if ended_by == "cancel":
        ended = service.cancel(job.id)
    else:  # past max_runtime, as the reaper sees it an hour later
        reap(service, now=utcnow() + timedelta(hours=1))
        ended = service.get(job.id)

    assert ended.state is (JobState.CANCELLED if ended_by == "cancel" else JobState.TIMED_OUT)
    assert ended.compute_state is ComputeState.RELEASED
    assert living(runner, script, escaped) == []


def test_the_log_names_the_isolation_and_a_daemon_left_behind_ends_with_the_job(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    gate.open()  # the script returns at once, leaving its daemon behind
    write_script(code_dir, DAEMON_SCRIPT, "daemon.py")
    spec = spec_for(code_dir, "daemon.py", params={**gate.params, "daemon": "double-fork"})

    job = run(service, spec)

    assert job.state is JobState.SUCCEEDED
    assert living(pid_in(gate, "daemon")) == []
    log = log_of(service, job.id)
    assert "isolation: cgroup /" in log or "isolation: subreaper + process walk" in log
    assert "stopped 1 process(es) the entrypoint left running" in log


def test_a_job_writing_past_its_disk_limit_fails_saying_so_and_the_next_job_runs(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, FILL_SCRIPT, "fill.py")
    write_script(code_dir, "print('after')\n", "after.py")
    with service_with(settings, local_disk_limit_bytes=1024 * 1024) as service:
        filled = run(service, spec_for(code_dir, "fill.py"))
        after = run(service, spec_for(code_dir, "after.py"))

    assert filled.state is JobState.FAILED
    assert filled.reason.startswith("disk limit of 1048576 bytes reached")
    assert "write less or raise EPHEMERID_LOCAL_DISK_LIMIT_BYTES" in filled.reason
    assert filled.outputs == []
    assert after.state is JobState.SUCCEEDED


def test_cancel_with_a_store_that_takes_no_write_still_ends_the_job_and_says_why(
    service: Service, settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job
    script, runner = gate.pid(), service.get(job.id).handle["pid"]
    limit = (settings.home / "jobs.db-wal").stat().st_size  # the store's next write grows it

    cancel = subprocess.run(
        [sys.executable, "-c", CANCEL_WITHOUT_ROOM, str(limit), "cancel", job.id],
        env={
            **os.environ,
            "EPHEMERID_HOME": str(settings.home),
            "PYTHONDONTWRITEBYTECODE": "1",
            "COLUMNS": "400",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )

    said = " ".join((cancel.stdout + cancel.stderr).split())
    assert cancel.returncode == 1, said
    assert living(runner, script) == []
    assert f"job {job.id}: the job store could not record it {JobState.CANCELLED.value}" in said
    assert "its compute is torn down" in said
    assert "Traceback" not in said
    cancelled = service.cancel(job.id)  # with room again, the end is recorded
    assert (cancelled.state, cancelled.compute_state) == (
        JobState.CANCELLED,
        ComputeState.RELEASED,
    )

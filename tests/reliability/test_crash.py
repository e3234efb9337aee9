"""SIGKILL ephemerid at any step of a job's life: nothing of the job runs on, and the job ends.

For each step, on the local backend and on azure-vm (the real client against the ARM simulator,
``VmPlayer`` playing the VMs): a real ephemerid process (``crashing.py``) submits one job and is
SIGKILLed at that step; a fresh service on the same home, store and bucket then runs the reaper
as its timer would (the first pass with the clock past the timeouts a stuck job waits out).
After every pass, a job recorded ``released`` has nothing of its compute alive; at the end the
job is terminal (and succeeded wherever its run could go on), none of its compute is alive, and
it was never given two runners or two VMs.

The job's code holds until the test opens its gate, and leaves a helper process behind it, as
user code may: teardown must end that too. Its processes are found by the job id on their
command lines (the runner's ``--job``, the work folder in the others').
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from compute.cloud import ephemerid
from compute.vms import VmPlayer, azure_env
from drive import DONE_COMPUTE, Gate, spec_for, wait_for
from ephemerid.compute.azure_vm import TAG_JOB
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for, utcnow
from ephemerid.service import Service
from ephemerid.testing.arm import ArmSimulator
from reliability import crashing

HARNESS = Path(crashing.__file__)
PAST_TIMEOUTS = timedelta(seconds=61)  # past ACCEPTED_STALE (60 s) and the 20 s provision timeout

JOB = """
import json, os, pathlib, subprocess, sys, time

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
gate = pathlib.Path(params["gate"])
with open(gate / "runs.txt", "a") as runs:
    runs.write(f"{os.getpid()}\\n")
job = os.environ["EPHEMERID_JOB_ID"]  # on its command line, as the runner's is
helper = [sys.executable, "linger.py", params["gate"], str(params["stubborn"]), job]
subprocess.Popen(helper, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
deadline = time.monotonic() + 60
while not (gate / "lingering").exists() and time.monotonic() < deadline:
    time.sleep(0.05)  # until the helper handles SIGTERM
(gate / "pid.tmp").write_text(str(os.getpid()))
os.replace(gate / "pid.tmp", gate / "pid")
deadline = time.monotonic() + 90
while not (gate / "open").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("gate opened: done", flush=True)
"""

LINGER = """
import pathlib, signal, sys, time

gate, stubborn = pathlib.Path(sys.argv[1]), sys.argv[2] == "True"
def on_term(signum, frame):
    (gate / "term").touch()
    if not stubborn:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(gate / "lingering").touch()
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    time.sleep(0.2)
"""

# Steps whose gate opens before the kill (the run reaches its end by itself), after the restart
# (the run goes on under the new service), or never (the reaper must end a job that is stuck).
OPEN_BEFORE = {
    "record created",
    "launch written",
    "result written",
    "teardown sent",
    "teardown confirmed",
}
OPEN_AFTER = {"handle saved", "running"}
STUCK = {"record created", "launch written", "provision started", "runner started"}
RESUMES = {"launch written", "handle saved", "running"} | OPEN_BEFORE - {"record created"}
SEEN_FROM_OUTSIDE = {"running", "teardown sent"}
# the reaper adopts the compute a crashed provision made (found by the job id alone: issue
# 14.1 and 14.13), and the job runs on it
ADOPTED = {("runner started", "azure-vm"), ("runner started", "local")}

KNOWN: dict[tuple[str, str], Any] = {}  # (step, backend) -> a mark, for a bug still open
CASES = [
    pytest.param(step, backend, marks=KNOWN.get((step, backend), ()), id=f"{backend}-{step}")
    for backend in ("local", "azure-vm")
    for step in crashing.STEPS
]


@dataclass
class World:
    """Where the job's compute lives: this machine's processes, or the simulator's VMs."""

    backend: str
    env: dict[str, str]
    sim: ArmSimulator | None = None

    def processes(self, job_id: str) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(job_id in a for a in cmdline):
                found.append(proc)
        return found

    def alive(self, job_id: str) -> list[str]:
        """What of the job's compute is alive: its processes (local) or its VMs (azure-vm)."""
        if self.sim is not None:
            return [vm.name for vm in self.sim.inventory()]
        return [" ".join(p.info["cmdline"]) for p in self.processes(job_id)]

    def provisions(self, job_id: str, gate: Gate) -> int:
        if self.sim is not None:
            return len(self.sim.created_for(TAG_JOB, job_id))
        return gate.starts()


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    backend = request.node.callspec.params["backend"]
    home = tmp_path / "home"
    if backend == "local":
        env = {
            "EPHEMERID_HOME": str(home),
            "EPHEMERID_HEARTBEAT_S": "0.5",
            "EPHEMERID_GRACE_S": "2",
            "EPHEMERID_PROVISION_TIMEOUT_S": "20",
        }
        yield World(backend, env)
        return
    sim = ArmSimulator(provision_s=0.05, delete_s=0.05, retry_after="0.02")
    with sim, VmPlayer(sim, tmp_path / "vms"):
        yield World(backend, azure_env(home, sim), sim)


@pytest.mark.parametrize(("step", "backend"), CASES)
def test_killing_ephemerid_at_a_step_leaves_no_compute_alive_and_the_job_over(
    step: str, backend: str, world: World, tmp_path: Path, code_dir: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    (code_dir / "job.py").write_text(JOB)
    (code_dir / "linger.py").write_text(LINGER)
    spec = spec_for(code_dir, params={**gate.params, "stubborn": False})
    key = f"crash-{uuid.uuid4().hex[:8]}"  # ids unique to this test: processes are found by it
    job_id = job_id_for("train", key)
    if step in OPEN_BEFORE:
        gate.open()
    try:
        kill_at(step, world, spec.model_dump_json(), key, gate, tmp_path)
        if step in OPEN_AFTER or (step, backend) in ADOPTED:
            gate.open()
        with ephemerid(world.env) as restarted:  # a fresh ephemerid on the same home and store
            job = recover(restarted, job_id, world, PAST_TIMEOUTS if step in STUCK else None)
            alive = world.alive(job_id)
    finally:
        gate.open()
        for proc in world.processes(job_id):  # whatever a failed test left behind
            with contextlib.suppress(psutil.Error):
                proc.kill()

    assert job.state.terminal, job
    assert job.compute_state in DONE_COMPUTE
    assert alive == [], f"the job's compute outlived it: {alive}"
    assert world.provisions(job_id, gate) <= 1
    if step in RESUMES or (step, backend) in ADOPTED:
        assert job.state is JobState.SUCCEEDED, job.reason
    if step == "record created":  # it runs, or fails before anything is rented
        assert job.state is JobState.SUCCEEDED or job.live_at is None, job.reason


def kill_at(step: str, world: World, spec: str, key: str, gate: Gate, tmp: Path) -> None:
    """Start the ephemerid process, wait for ``step``, SIGKILL it."""
    reached = tmp / "reached"
    env = {**os.environ, **world.env, crashing.REACHED: str(reached)}
    if step not in SEEN_FROM_OUTSIDE or (step == "teardown sent" and world.sim is None):
        env[crashing.CRASH_AT] = step  # local: the kill lands while its teardown is under way
    if step == "teardown sent" and world.sim is not None:
        world.sim.hold("DELETE")  # the VM is deleting; the answer is kept back
    process = subprocess.Popen(
        [sys.executable, str(HARNESS), spec, key], env=env, stderr=subprocess.PIPE
    )
    try:
        wait_for(
            lambda: process.poll() is not None or reached_step(step, world, gate, reached), step
        )
    finally:
        process.kill()
        _, err = process.communicate(timeout=30)
        if world.sim is not None:
            world.sim.release_holds()
    assert process.returncode == -9, err.decode()


def reached_step(step: str, world: World, gate: Gate, reached: Path) -> bool:
    if step == "running":
        return (gate.path / "pid").exists()
    if step == "teardown sent" and world.sim is not None:
        return world.sim.held() > 0
    return reached.exists() and reached.read_text() == step


def recover(service: Service, job_id: str, world: World, advance: timedelta | None) -> JobRecord:
    """Reaper passes, as the timer runs them, until the job is over and its compute given back.

    After each pass: a job recorded ``released`` has nothing of its compute alive.
    """

    def one_pass(now_ahead: timedelta | None = None) -> JobRecord | None:
        reap(service, utcnow() + now_ahead if now_ahead else None)
        job = service.get(job_id)
        if job.compute_state is ComputeState.RELEASED:
            alive = world.alive(job_id)
            assert alive == [], f"recorded released, yet alive: {alive}"
        return job if job.state.terminal and job.compute_state in DONE_COMPUTE else None

    return one_pass(advance) or wait_for(one_pass, f"job {job_id} to end", timeout=60)

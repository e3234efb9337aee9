"""The reaper: the timer that finishes what events missed and gives back compute nobody owns."""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path

from drive import (
    Gate,
    alive,
    held_spec,
    service_with,
    session_of,
    spec_for,
    wait_for,
    wait_gone,
    write_script,
)
from ephemerid import names
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobState, utcnow
from ephemerid.service import Service
from ephemerid.settings import Settings


def kill_session(sid: int) -> None:
    for pid in session_of(sid):
        os.kill(pid, signal.SIGKILL)


def test_compute_that_died_without_a_result_fails_the_job_and_is_released(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job
    script = gate.pid()
    kill_session(job.handle["pid"])
    wait_gone([job.handle["pid"], script])

    actions = reap(service)

    reaped = service.store.get(job.id)
    assert reaped.state is JobState.FAILED
    assert reaped.reason == "compute exited without writing a result"
    assert reaped.compute_state is ComputeState.RELEASED
    assert service.backends["local"].list_owned() == []
    assert any(job.id in action and "FAILED" in action for action in actions)
    assert service.artifacts.stat(names.run_key(job.id, names.RESULT_FILE)) is None


def test_a_result_nobody_handled_is_completed_by_the_reaper(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('finished on my own')\n")
    job = service.submit(spec_for(code_dir)).job
    wait_for(lambda: service.artifacts.stat(names.run_key(job.id, names.RESULT_FILE)), "the result")
    assert service.store.get(job.id).state is JobState.RUNNING  # nobody handled the event

    actions = reap(service)

    reaped = service.store.get(job.id)
    assert reaped.state is JobState.SUCCEEDED
    assert reaped.compute_state is ComputeState.RELEASED
    assert reaped.exit_code == 0
    assert actions == [f"{job.id}: result found -> SUCCEEDED"]


def test_compute_whose_job_is_unknown_is_torn_down(
    service: Service, settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    # Another store on the same compute folder: its job is unknown to ours (a lost record).
    other_store = f"sqlite://{tmp_path / 'other.db'}"
    with service_with(settings, store_url=other_store) as other:
        stray = other.submit(held_spec(code_dir, gate)).job
        script = gate.pid()
        stray_dir = service.settings.home / "compute" / "jobs" / "train-leftover"
        stray_dir.mkdir()  # a scratch folder with no handle and no process

        actions = reap(service)

        wait_gone([stray.handle["pid"], script])
        assert not stray_dir.exists()
        assert service.backends["local"].list_owned() == []
        assert sorted(actions) == [
            f"{stray.id}: local compute with no job -> torn down",
            "train-leftover: local compute with no job -> torn down",
        ]


def test_a_finished_job_whose_compute_is_still_live_is_released(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job
    script = gate.pid()
    # As if the completion handler recorded the end and crashed before its teardown.
    finished = service.store.update(
        service.store.get(job.id).evolve(state=JobState.SUCCEEDED, finished_at=utcnow())
    )
    assert finished.compute_state is ComputeState.LIVE

    actions = reap(service)

    reaped = service.store.get(job.id)
    assert reaped.state is JobState.SUCCEEDED
    assert reaped.compute_state is ComputeState.RELEASED
    assert actions == [f"{job.id}: teardown owed -> released"]
    assert not alive(job.handle["pid"])
    assert not alive(script)


def test_a_healthy_running_job_is_left_alone(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    with service_with(settings, heartbeat_timeout_s=1.5) as service:
        job = service.submit(held_spec(code_dir, gate)).job
        gate.pid()
        wait_for(
            lambda: service.artifacts.stat(names.run_key(job.id, names.HEARTBEAT_FILE)),
            "a heartbeat",
        )
        before = service.store.get(job.id)
        running_since = utcnow()

        assert reap(service) == []
        wait_for(
            lambda: utcnow() - running_since > timedelta(seconds=2.5),
            "longer than the heartbeat timeout",
        )
        assert reap(service) == []
        assert service.store.get(job.id) == before


def test_a_frozen_runner_loses_its_heartbeat_and_is_killed(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    with service_with(settings, heartbeat_timeout_s=1.5) as service:
        job = service.submit(held_spec(code_dir, gate)).job
        script = gate.pid()
        runner = job.handle["pid"]
        os.kill(runner, signal.SIGSTOP)  # SIGTERM stays pending on it: only SIGKILL ends it
        frozen_at = utcnow()
        wait_for(lambda: utcnow() - frozen_at > timedelta(seconds=2), "the heartbeat to lapse")

        actions = reap(service)

        reaped = service.store.get(job.id)
        assert reaped.state is JobState.FAILED
        assert reaped.reason.startswith("lost heartbeat")
        assert reaped.compute_state is ComputeState.RELEASED
        assert not alive(runner)
        assert not alive(script)
        assert session_of(runner) == []
        assert len(actions) == 1 and "lost heartbeat" in actions[0]


def test_a_job_past_its_max_runtime_is_timed_out_by_the_reaper(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate, compute={"max_runtime": 60})).job
    script = gate.pid()
    settings = service.settings
    later = utcnow() + timedelta(seconds=60 + settings.grace_s + settings.heartbeat_timeout_s + 1)

    reap(service, now=later)

    reaped = service.store.get(job.id)
    assert reaped.state is JobState.TIMED_OUT
    assert reaped.reason == "ran past max_runtime of 60s (reaper)"
    assert reaped.compute_state is ComputeState.RELEASED
    wait_gone([job.handle["pid"], script])


def test_reaping_twice_does_nothing_the_second_time(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job
    gate.pid()
    kill_session(job.handle["pid"])
    wait_gone([job.handle["pid"]])

    first = reap(service)
    reaped = service.store.get(job.id)

    assert len(first) == 1
    assert reap(service) == []
    assert service.store.get(job.id) == reaped

"""``ephemerid.testing.settle``: the one loop that drives jobs until they are settled."""

from __future__ import annotations

from pathlib import Path

import pytest

from drive import Gate, held_spec, service_with, spec_for, write_script
from ephemerid.record import ComputeState, JobState
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.testing.settle import NotSettled, settle


def test_a_job_is_driven_until_it_has_ended_and_its_compute_is_released(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('settled')\n")
    job = service.submit(spec_for(code_dir)).job
    ticks: list[int] = []

    [done] = settle(service, [job.id], timeout=60, on_tick=lambda: ticks.append(1))

    assert (done.state, done.compute_state) == (JobState.SUCCEEDED, ComputeState.RELEASED)
    assert done == service.get(job.id)
    assert ticks, "on_tick is called each tick"


def test_jobs_waiting_for_capacity_are_dispatched_until_all_have_settled(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    with service_with(settings, local_slots=1) as service:
        gates = [Gate(tmp_path / f"gate-{i}") for i in range(2)]
        first, second = (
            service.submit(held_spec(code_dir, gate), key=f"job-{i}").job
            for i, gate in enumerate(gates)
        )
        assert service.get(second.id).state is JobState.WAITING_FOR_CAPACITY
        for gate in gates:
            gate.open()

        jobs = settle(service, [first.id, second.id], timeout=60)

    assert [j.id for j in jobs] == [first.id, second.id]
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 2
    assert [g.starts() for g in gates] == [1, 1]


def test_a_timeout_names_each_job_not_settled_and_its_state(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    job = service.submit(held_spec(code_dir, Gate(tmp_path / "gate"))).job

    with pytest.raises(NotSettled, match=rf"job {job.id} is RUNNING with compute live"):
        settle(service, [job.id], timeout=0.5)

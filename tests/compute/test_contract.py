"""The ComputeBackend contract, run against every adapter: local, azure-vm and azure-ml.

Each test runs once per adapter, so an adapter that drifts from the others fails here. Every
adapter is built from settings by the registry, as the function app builds it, and its compute
really runs the job: local compute starts the runner as a subprocess; on the ARM simulator,
``VmPlayer`` boots the runner of each VM and ``AmlPlayer`` plays each Azure ML job's node (see
vms.py and aml.py). The job is a script that holds until the test opens its gate, so "the
compute is there" is checked against what runs, and "gone" against what the simulator still
bills or the processes still alive.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from compute.aml import AmlPlayer, aml_env
from compute.vms import VmPlayer, azure_env
from drive import Gate, held_spec, session_of, spec_for, wait_gone, write_script
from ephemerid.artifacts import ArtifactStore, open_artifacts
from ephemerid.compute import ADAPTERS, ComputeBackend, ComputeStatus, Handle
from ephemerid.compute.azure_vm import TAG_JOB
from ephemerid.errors import SpecError
from ephemerid.models import ModelRegistry
from ephemerid.record import JobRecord, job_id_for
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.staging import Staging
from ephemerid.testing.aml import TERMINAL
from ephemerid.testing.arm import ArmSimulator

BACKENDS = ["local", "azure-vm", "azure-ml"]
THERE = (ComputeStatus.STARTING, ComputeStatus.RUNNING)


@dataclass
class Rig:
    """One adapter on its own settings, and how to see what it rents from outside it.

    ``held(handle)``: the handle's compute is still there (a live process of the job's session,
    a VM in the simulator's inventory, an Azure ML job not finished). ``rented(job_id)``: how many
    pieces of compute there are, or were, for the job (live runners; VMs or Azure ML jobs the
    simulator created). ``fresh()``: another backend on the same settings, as another function
    instance would build it.
    """

    name: str
    backend: ComputeBackend
    settings: Settings
    artifacts: ArtifactStore
    root: Path
    held: Callable[[Handle], bool]
    rented: Callable[[str], int]
    fresh: Callable[[], ComputeBackend]
    provisioned: list[Handle] = field(default_factory=list)

    def job(self, key: str) -> tuple[JobRecord, Gate]:
        """An accepted job, staged as submit stages it, whose script holds until its gate opens."""
        code = self.root / f"code-{key}"
        code.mkdir()
        gate = Gate(self.root / f"gate-{key}")
        return self.staged(key, held_spec(code, gate)), gate

    def staged(self, key: str, spec: JobSpec) -> JobRecord:
        staging = Staging(self.artifacts, ModelRegistry(self.artifacts), self.settings)
        plan = staging.check(spec)
        job = JobRecord(
            id=job_id_for("train", key), key=key, spec=spec, source="test", backend=self.name
        )
        staging.write_launch(job, plan)
        return job

    def provision(self, job: JobRecord, backend: ComputeBackend | None = None) -> Handle:
        handle = (backend or self.backend).provision(job)
        self.provisioned.append(handle)
        return handle

    def owned_by(self, job_id: str, backend: ComputeBackend | None = None) -> list[Handle]:
        return [h for h in (backend or self.backend).list_owned() if h.job_id == job_id]


def settings_for(name: str, home: Path, sim: ArmSimulator | None) -> Settings:
    if name == "local":
        return Settings.from_env({}, home=home, heartbeat_s=0.5, grace_s=2.0)
    assert sim is not None
    env = azure_env(home, sim) if name == "azure-vm" else aml_env(home, sim)
    return Settings.from_env(env)


def live_runners(job_id: str) -> int:
    """Runner processes on this machine started for ``job_id``."""
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if b"ephemerid.runner" in argv and job_id.encode() in argv:
                    count += 1
    return count


def local_held(handle: Handle) -> bool:
    pid = handle.data.get("pid")
    return bool(pid) and bool(session_of(pid))


def watchers(sim: ArmSimulator) -> tuple[Callable[[Handle], bool], Callable[[str], int]]:
    """``held`` and ``rented`` for a backend renting from the simulator: its VMs or its jobs."""

    def held(handle: Handle) -> bool:
        if "vm" in handle.data:
            return sim.vm(handle.data["vm"]) is not None
        job = sim.ml.job(handle.data["aml_job"])
        return job is not None and job.status not in TERMINAL

    def rented(job_id: str) -> int:
        jobs = [j for j in sim.ml.created if j.tags.get(TAG_JOB) == job_id]
        return len(sim.created_for(TAG_JOB, job_id)) + len(jobs)

    return held, rented


@pytest.fixture(params=BACKENDS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    """The adapter, its simulator and player; every piece of compute it holds ends after."""
    name = str(request.param)
    made: list[ComputeBackend] = []
    with contextlib.ExitStack() as stack:
        sim = None
        if name != "local":
            sim = stack.enter_context(
                ArmSimulator(provision_s=0.05, delete_s=0.05, retry_after="0.02")
            )
            player = VmPlayer if name == "azure-vm" else AmlPlayer
            stack.enter_context(player(sim, tmp_path / "played"))
        settings = settings_for(name, tmp_path / "home", sim)
        artifacts = open_artifacts(settings.artifacts_url)

        def fresh() -> ComputeBackend:
            made.append(ADAPTERS[name].build(settings, artifacts))
            return made[-1]

        held, rented = watchers(sim) if sim else (local_held, live_runners)
        rig = Rig(name, fresh(), settings, artifacts, tmp_path, held, rented, fresh)
        yield rig
        janitor = fresh()
        for handle in janitor.list_owned():
            janitor.teardown(handle)
        if name == "local":  # a LocalCompute waits for its own runners only in poll or teardown
            for backend in made:
                for handle in rig.provisioned:
                    backend.teardown(handle)
        for backend in made:
            backend.close()


def test_every_registered_adapter_runs_this_contract() -> None:
    assert sorted(ADAPTERS) == sorted(BACKENDS)


# --- provision -----------------------------------------------------------------------------


def test_provisioning_the_same_job_twice_rents_its_compute_once(rig: Rig) -> None:
    job, gate = rig.job("twice")

    first = rig.provision(job)
    again = rig.provision(job)

    assert (again.backend, again.job_id, again.data) == (rig.name, job.id, first.data)
    gate.pid()  # its code runs: every runner either provision started exists by now
    assert rig.rented(job.id) == 1
    assert [h.job_id for h in rig.backend.list_owned()] == [job.id]
    assert gate.starts() == 1


def test_a_provision_retried_by_another_instance_finds_what_the_first_started(rig: Rig) -> None:
    job, gate = rig.job("retried")
    first = rig.provision(job)
    gate.pid()

    again = rig.provision(job, rig.fresh())

    assert again.data == first.data
    assert rig.rented(job.id) == 1
    assert [h.job_id for h in rig.backend.list_owned()] == [job.id]
    assert gate.starts() == 1


# --- poll ----------------------------------------------------------------------------------


def test_poll_is_not_gone_while_the_job_runs_and_is_gone_after_teardown(rig: Rig) -> None:
    job, gate = rig.job("poll")
    handle = rig.provision(job)
    assert rig.backend.poll(handle) in THERE
    gate.pid()  # the job's script runs on it

    assert rig.backend.poll(handle) in THERE
    assert [rig.backend.poll(h) for h in rig.owned_by(job.id)] in ([s] for s in THERE)
    assert rig.backend.teardown(handle) is True
    assert rig.backend.poll(handle) is ComputeStatus.GONE


# --- teardown ------------------------------------------------------------------------------


def test_teardown_returns_true_only_once_the_compute_is_gone(rig: Rig) -> None:
    job, gate = rig.job("gone")
    handle = rig.provision(job)
    script = gate.pid()
    assert rig.held(handle)

    assert rig.backend.teardown(handle) is True

    assert not rig.held(handle), "teardown said True while the compute is still there"
    assert rig.owned_by(job.id) == []
    wait_gone([script])


def test_a_second_teardown_is_still_true_and_touches_no_other_job(rig: Rig) -> None:
    job, gate = rig.job("again")
    other, other_gate = rig.job("other")
    handle = rig.provision(job)
    kept = rig.provision(other)
    gate.pid()
    other_gate.pid()

    assert rig.backend.teardown(handle) is True
    assert rig.backend.teardown(handle) is True
    assert rig.fresh().teardown(handle) is True

    assert not rig.held(handle)
    assert rig.held(kept) and rig.backend.poll(kept) in THERE
    assert [h.job_id for h in rig.backend.list_owned()] == [other.id]


def test_teardown_of_compute_never_provisioned_is_true_and_touches_nothing(rig: Rig) -> None:
    other, _ = rig.job("other")
    kept = rig.provision(other)

    assert rig.backend.teardown(Handle(rig.name, job_id_for("train", "never"), {})) is True

    assert rig.held(kept)
    assert [h.job_id for h in rig.backend.list_owned()] == [other.id]


@pytest.mark.parametrize("rig", ["local", "azure-vm", "azure-ml"], indirect=True)
def test_teardown_knowing_only_the_job_ends_the_compute_provision_started(rig: Rig) -> None:
    job, gate = rig.job("unrecorded")
    handle = rig.provision(job)  # the handle never reached the job's record
    gate.pid()

    assert rig.backend.teardown(Handle(rig.name, job.id, {})) is True

    assert not rig.held(handle), "teardown said True while the compute is still there"
    assert rig.owned_by(job.id) == []


# --- list_owned ----------------------------------------------------------------------------


def test_list_owned_finds_the_compute_until_it_is_torn_down_and_not_after(rig: Rig) -> None:
    job, gate = rig.job("owned")
    assert rig.owned_by(job.id) == []
    rig.provision(job)
    gate.pid()

    [found] = rig.owned_by(job.id)
    assert rig.owned_by(job.id, rig.fresh()) == [found], "another instance finds it too"
    assert rig.backend.teardown(found) is True  # a listed handle is enough, as the reaper has

    assert rig.owned_by(job.id) == []
    assert rig.owned_by(job.id, rig.fresh()) == []


# --- check and close -----------------------------------------------------------------------


def test_check_accepts_a_plain_job(rig: Rig) -> None:
    write_script(rig.root, "print('hi')\n")

    rig.backend.check(spec_for(rig.root))


def test_check_refuses_a_multi_node_job_unless_the_backend_spreads_one_over_nodes(
    rig: Rig,
) -> None:
    write_script(rig.root, "print('hi')\n")
    spec = spec_for(rig.root, compute={"nodes": 2})

    if ADAPTERS[rig.name].multi_node:
        rig.backend.check(spec)
    else:
        with pytest.raises(SpecError, match=r"compute\.nodes: 2 nodes"):
            rig.backend.check(spec)


def test_close_lets_go_of_the_backend_and_leaves_the_compute_to_the_next_one(rig: Rig) -> None:
    job, gate = rig.job("closed")
    handle = rig.provision(job)
    gate.pid()

    rig.backend.close()

    next_one = rig.fresh()
    assert rig.held(handle)
    assert next_one.poll(handle) in THERE
    assert [h.job_id for h in next_one.list_owned()] == [job.id]
    assert next_one.teardown(handle) is True
    assert not rig.held(handle)
    assert next_one.list_owned() == []

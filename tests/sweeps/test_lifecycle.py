"""A sweep's promises under events: a losing trial pruned through the normal teardown, a crash
in the middle of fan-out makes no second trial, and cancelling the sweep ends its trials."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drive import HOLD_SCRIPT, Gate, wait_for, write_script
from ephemerid.errors import Unavailable
from ephemerid.reaper import reap
from ephemerid.record import JobState
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.sweeps import validate_sweep
from ephemerid.sweeps.state import view
from sweeping import drive, sweep_data

# Good trials log 60 steps at once; the losing one logs its (high) losses slowly and would run
# for about a minute: only the pruner ends it early.
RACE = """
import json, os, pathlib, time
from ephemerid import track

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
for step in range(60):
    if params["quality"] == "bad":
        time.sleep(1.0)
        track.log_metric("val_loss", 10.0 + step, step=step)
    else:
        track.log_metric("val_loss", 1.0 / (step + 1) + params["offset"], step=step)
print("ran to the end")
"""


def test_a_losing_trial_is_pruned_with_its_reason_and_its_compute_given_back(
    sweeps: Service, code_dir: Path
) -> None:
    write_script(code_dir, RACE, "train.py")
    search = {
        "method": "grid",
        "space": {"quality": ["good", "bad"], "offset": [0.0, 0.1]},
        "metric": "val_loss",
        "max_parallel": 4,
        "early_stop": {"method": "median", "startup_trials": 2},
    }
    data = sweep_data(code_dir, search)
    submitted = sweeps.submit(validate_sweep(data), key="prune")
    sweep = drive(sweeps, submitted.job.id, timeout=300)
    trials = {
        (t.spec.params["quality"], t.spec.params["offset"]): t
        for t in sweeps.sweep_trials(sweep.id)
    }

    assert sweep.state is JobState.SUCCEEDED
    assert [trials[("good", o)].state for o in (0.0, 0.1)] == [JobState.SUCCEEDED] * 2
    for offset in (0.0, 0.1):
        bad = trials[("bad", offset)]
        assert bad.state is JobState.PRUNED
        match = re.fullmatch(
            r"pruned at step (\d+): val_loss ([\d.]+) behind median ([\d.]+) of 2 finished "
            r"trials at that step",
            bad.reason,
        )
        assert match, bad.reason
        step, value, median = int(match[1]), float(match[2]), float(match[3])
        assert step < 59 and value == 10.0 and median < 1.2
        assert bad.compute_state.value == "released"
        assert "ran to the end" not in sweeps.read_log(bad.id).decode()
    assert view(sweep)["counts"]["pruned"] == 2
    assert sweeps.held_compute() == 0


CRASH = """
import json, os, sys
from ephemerid.app import build_service
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.sweeps import lease, validate_sweep

lease.LEASE_S = 1.0  # the lease this process dies holding runs out soon
at, when = int(sys.argv[3]), sys.argv[4]
service = build_service(Settings.from_env({}, home=sys.argv[1], local_slots=4, heartbeat_s=0.5))
submit, made = Service.submit, []

def crashing(self, spec, **kwargs):
    if not kwargs.get("parent"):
        return submit(self, spec, **kwargs)
    made.append(spec)
    if len(made) == at and when == "before":
        os._exit(3)  # the trial is sampled and in the journal; its job is not made
    done = submit(self, spec, **kwargs)
    if len(made) == at and when == "after":
        os._exit(3)  # the trial's job is made; the sweep's record does not say so yet
    return done

Service.submit = crashing
service.submit(validate_sweep(json.loads(sys.argv[2])), key="crash")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_in_the_middle_of_fan_out_makes_no_second_trial(
    settings: Settings, sweeps: Service, train_code: Path, tmp_path: Path, when: str
) -> None:
    search = {
        "method": "random",
        "space": {"lr": {"uniform": [0.01, 0.1]}},
        "metric": "val_loss",
        "max_trials": 4,
        "max_parallel": 3,
    }
    script = tmp_path / "crash.py"
    script.write_text(CRASH)
    data = json.dumps(sweep_data(train_code, search))
    crashed = subprocess.run(
        [sys.executable, str(script), str(settings.home), data, "2", when],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert crashed.returncode == 3, crashed.stderr
    [sweep] = [j for j in sweeps.list() if j.sweep is not None]
    made = [j for j in sweeps.list() if j.parent == sweep.id]
    assert len(made) == (1 if when == "before" else 2)

    wait_for(
        lambda: reap(sweeps) is not None and len(sweeps.sweep_trials(sweep.id)) >= 3,
        "a reaper pass to carry the sweep on once the dead process's lease ran out",
        60,
    )
    done = drive(sweeps, sweep.id)
    trials = [j for j in sweeps.list() if j.parent == sweep.id]

    assert done.state is JobState.SUCCEEDED
    assert len(trials) == 4
    assert sorted(t.spec.name or "" for t in trials) == [f"lin-{n}" for n in range(4)]
    assert all(t.state is JobState.SUCCEEDED for t in trials)
    assert sweeps.held_compute() == 0


def test_cancelling_a_sweep_cancels_its_trials_and_makes_no_more(
    sweeps: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, HOLD_SCRIPT, "train.py")
    search = {"method": "grid", "space": {"n": [1, 2, 3, 4, 5]}, "max_parallel": 2}
    data = sweep_data(code_dir, search, trial={"params": gate.params})
    sweep = sweeps.submit(validate_sweep(data), key="cancel").job
    wait_for(lambda: gate.starts() >= 2, "two trials to run", 60)

    cancelled = sweeps.cancel(sweep.id)
    done = drive(sweeps, sweep.id)
    trials = sweeps.sweep_trials(sweep.id)

    assert cancelled.state is JobState.CANCELLED
    assert done.state is JobState.CANCELLED
    assert len(trials) == 2
    assert {t.state for t in trials} == {JobState.CANCELLED}
    assert all(f"its sweep {sweep.id} ended" in t.reason for t in trials)
    assert sweeps.held_compute() == 0
    reap(sweeps)  # a later pass makes no trial for a cancelled sweep
    assert len(sweeps.sweep_trials(sweep.id)) == 2


def test_a_transient_outage_while_a_trial_is_submitted_fails_no_trial(
    sweeps: Service, train_code: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked, calls = sweeps._checked_backend, []

    def flaky(spec: Any) -> str:
        calls.append(spec)
        if len(calls) == 3:  # the sweep's own check, the first trial, then an outage
            raise Unavailable("the job store is briefly unreachable")
        return checked(spec)

    monkeypatch.setattr(sweeps, "_checked_backend", flaky)
    search = {"method": "grid", "space": {"lr": [0.05, 0.1, 0.2]}, "max_parallel": 3}
    submitted = sweeps.submit(validate_sweep(sweep_data(train_code, search)), key="outage")
    made = [j for j in sweeps.list() if j.parent == submitted.job.id]
    assert len(made) == 1  # the others are sampled, and wait for the next step

    done = drive(sweeps, submitted.job.id)
    trials = sweeps.sweep_trials(done.id)

    assert done.state is JobState.SUCCEEDED
    assert sorted(t.spec.params["lr"] for t in trials) == [0.05, 0.1, 0.2]
    assert {t.state for t in trials} == {JobState.SUCCEEDED}

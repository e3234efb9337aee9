"""Grid, random and bayes sweeps end to end: every trial an ordinary job, at most max_parallel
holding compute at once, the best one named and registered, nothing left rented."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from ephemerid import names
from ephemerid.artifacts import get_bytes
from ephemerid.compare import compare
from ephemerid.reaper import reap
from ephemerid.record import JobState
from ephemerid.service import Service
from ephemerid.spec import ModelRef
from ephemerid.sweeps import validate_sweep
from ephemerid.sweeps.state import view
from sweeping import drive, overlap, run_sweep, sweep_data


def test_a_grid_runs_each_point_once_and_registers_the_best(
    sweeps: Service, train_code: Path
) -> None:
    search = {
        "method": "grid",
        "space": {"lr": [0.3, 0.05, 0.001], "epochs": {"int": [1, 2]}},
        "metric": "val_loss",
        "max_parallel": 2,
    }
    data = sweep_data(train_code, search, register_best={"name": "lin", "alias": "staging"})
    sweep = run_sweep(sweeps, data)
    trials = sweeps.sweep_trials(sweep.id)

    assert sweep.state is JobState.SUCCEEDED
    assert sorted((t.spec.params["lr"], t.spec.params["epochs"]) for t in trials) == sorted(
        itertools.product([0.3, 0.05, 0.001], [1, 2])
    )
    assert all(t.state is JobState.SUCCEEDED and t.parent == sweep.id for t in trials)
    assert overlap(trials) <= 2
    assert sweeps.held_compute() == 0
    best = min(trials, key=lambda t: t.metrics["val_loss"])
    shown = view(sweep)
    assert shown["best"]["job"] == best.id
    assert shown["best"]["value"] == best.metrics["val_loss"]
    assert sweep.metrics == {"val_loss": best.metrics["val_loss"]}
    assert shown["counts"] == {"running": 0, "succeeded": 6, "pruned": 0, "failed": 0}
    assert shown["cost_usd"] == round(sum(t.cost_usd or 0.0 for t in trials), 6)
    # the alias points at the best trial's model
    version = sweeps.models.resolve(ModelRef(name="lin", alias="staging"))
    assert version.job_id == best.id
    assert sweep.model_version == version.ref
    key = f"{version.files}/weights.json"
    weights = json.loads(get_bytes(sweeps.artifacts, key))
    assert set(weights) == {"w", "b"}


def test_a_random_search_samples_inside_the_space_and_a_resubmit_adds_nothing(
    sweeps: Service, train_code: Path
) -> None:
    search = {
        "method": "random",
        "space": {"lr": {"loguniform": [0.001, 0.3]}, "epochs": {"int": [1, 3]}},
        "metric": "val_loss",
        "max_trials": 4,
        "max_parallel": 4,
    }
    data = sweep_data(train_code, search)
    sweep = run_sweep(sweeps, data)
    again = sweeps.submit(validate_sweep(data), key="test-lin")
    trials = sweeps.sweep_trials(sweep.id)

    assert sweep.state is JobState.SUCCEEDED
    assert len(trials) == 4
    assert all(0.001 <= t.spec.params["lr"] <= 0.3 for t in trials)
    assert all(t.spec.params["epochs"] in (1, 2, 3) for t in trials)
    assert len({t.spec.params["lr"] for t in trials}) == 4
    assert (again.created, again.job.id) == (False, sweep.id)
    assert len([j for j in sweeps.list() if j.parent == sweep.id]) == 4


def test_moving_an_ended_sweep_on_again_changes_nothing(sweeps: Service, train_code: Path) -> None:
    search = {"method": "grid", "space": {"lr": [0.05, 0.1]}, "metric": "val_loss"}
    sweep = run_sweep(sweeps, sweep_data(train_code, search))
    assert sweep.sweep is not None
    journal = sweep.sweep["journal"]

    for _ in range(3):  # reaper passes, redelivered events
        reap(sweeps)
        sweeps.advance_sweep(sweep.id)
    after = sweeps.get(sweep.id)

    assert after.sweep is not None and after.sweep["journal"] == journal  # Optuna's log too
    assert after.state is JobState.SUCCEEDED
    assert after.sweep["trials"] == sweep.sweep["trials"]


def test_bayes_tells_optuna_each_trials_value_and_compare_ranks_them(
    sweeps: Service, train_code: Path
) -> None:
    search = {
        "method": "bayes",
        "space": {"lr": {"uniform": [0.001, 0.3]}},
        "metric": "val_loss",
        "goal": "minimize",
        "max_trials": 5,
        "max_parallel": 2,
    }
    sweep = run_sweep(sweeps, sweep_data(train_code, search))
    trials = sweeps.sweep_trials(sweep.id)
    rows = compare(sweeps, [sweep], by="val_loss")

    assert sweep.state is JobState.SUCCEEDED
    told = {t["job"]: t["value"] for t in view(sweep)["trials"]}
    assert told == {t.id: t.metrics["val_loss"] for t in trials}
    assert [r["id"] for r in rows] == [
        t.id for t in sorted(trials, key=lambda t: t.metrics["val_loss"])
    ]
    assert {r["sweep"] for r in rows} == {sweep.id}
    assert overlap(trials) <= 2


def test_a_trial_that_fails_is_recorded_and_the_sweep_goes_on(
    sweeps: Service, train_code: Path
) -> None:
    search = {"method": "grid", "space": {"lr": [0.05], "fail": [0, 1]}, "metric": "val_loss"}
    sweep = run_sweep(sweeps, sweep_data(train_code, search))
    by_fail = {t.spec.params["fail"]: t for t in sweeps.sweep_trials(sweep.id)}

    assert sweep.state is JobState.SUCCEEDED
    assert by_fail[1].state is JobState.FAILED
    assert by_fail[0].state is JobState.SUCCEEDED
    assert view(sweep)["counts"]["failed"] == 1
    assert view(sweep)["best"]["job"] == by_fail[0].id


def test_a_sweep_whose_every_trial_failed_fails(sweeps: Service, train_code: Path) -> None:
    search = {"method": "grid", "space": {"lr": [0.05], "fail": [1, 2]}}
    sweep = run_sweep(sweeps, sweep_data(train_code, search))

    assert sweep.state is JobState.FAILED
    assert "every one of its 2 trials failed" in sweep.reason


def test_a_metric_the_trials_never_log_fails_the_sweep_after_the_first_trial(
    sweeps: Service, train_code: Path
) -> None:
    search = {
        "method": "random",
        "space": {"lr": {"uniform": [0.01, 0.1]}},
        "metric": "val_loss",
        "max_trials": 6,
        "max_parallel": 1,
    }
    data = sweep_data(train_code, search, trial={"params": {"metric_name": "loss"}})
    sweep = run_sweep(sweeps, data)
    trials = sweeps.sweep_trials(sweep.id)

    assert sweep.state is JobState.FAILED
    assert "without logging val_loss" in sweep.reason
    assert "it logged loss" in sweep.reason
    assert len(trials) == 1  # no trial after it was made
    assert sweeps.held_compute() == 0


def test_a_trial_reads_its_params_merged_over_the_templates(
    sweeps: Service, train_code: Path
) -> None:
    search = {"method": "grid", "space": {"lr": [0.05]}}
    data = sweep_data(train_code, search, trial={"params": {"lr": 9.0, "epochs": 1}})
    sweep = run_sweep(sweeps, data)
    [trial] = sweeps.sweep_trials(sweep.id)
    log = get_bytes(sweeps.artifacts, names.run_key(trial.id, names.LOG_FILE)).decode()

    assert trial.spec.params == {"lr": 0.05, "epochs": 1}
    assert "lr=0.05 epochs=1" in log
    assert trial.spec.name == "lin-0"
    assert drive(sweeps, sweep.id).state is JobState.SUCCEEDED


def test_trials_of_an_entrypoint_whose_name_is_no_job_name_get_valid_names(
    sweeps: Service, train_code: Path
) -> None:
    (train_code / "my train+v2.py").write_text((train_code / "train.py").read_text())
    data = sweep_data(train_code, {"method": "grid", "space": {"lr": [0.05]}})
    data.pop("name")
    data["trial"]["entrypoint"] = "my train+v2.py"
    sweep = run_sweep(sweeps, data)
    [trial] = sweeps.sweep_trials(sweep.id)

    assert sweep.state is JobState.SUCCEEDED
    assert trial.spec.name == "my-train-v2-0"

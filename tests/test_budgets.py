"""Budgets: compute.max_cost at submit (refused, or capped) and while a job runs, and the
budgets of the rules file (wait or refuse), counted from the records once however often an event
comes; a sweep stops launching trials once its budget has no room for one more."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import EXAMPLES
from drive import Gate, held_spec, run, service_with, spec_for, write_script
from ephemerid import names
from ephemerid.artifacts import get_bytes
from ephemerid.budgets import Budget, Facts, load_budgets
from ephemerid.costs.periods import period_start
from ephemerid.errors import OverBudget, RuleError, SpecError
from ephemerid.reaper import reap
from ephemerid.record import ComputeState, JobRecord, JobState, utcnow
from ephemerid.rules import Rules
from ephemerid.settings import Settings
from ephemerid.spec import validate_spec
from ephemerid.sweeps import validate_sweep
from ephemerid.testing.settle import settle
from in_process import run_eph
from sweeping import TRAIN, drive, sweep_data


def rules_with(settings: Settings, *budgets: str) -> None:
    lines = "".join(f"  - {b}\n" for b in budgets)
    settings.rules_path.write_text(f"version: 1\nrules: []\nbudgets:\n{lines}")


# -- the rules file ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "said"),
    [
        ("{scope: overall, period: day, limit: -5}", "budgets.0.limit"),
        ("{scope: overall, period: day, limit: lots}", "budgets.0.limit"),
        ("{scope: overall, period: day, limit: .nan}", "budgets.0.limit"),
        ("{scope: overall, period: week, limit: 5}", "budgets.0.period"),
        ("{scope: team, period: day, limit: 5}", "budgets.0.scope"),
        ("{scope: rule, period: day, limit: 5, on_exceed: ignore}", "budgets.0.on_exceed"),
        ("{scope: overall, name: x, period: day, limit: 5}", "drop its name"),
        ("{scope: overall, period: day}", "budgets.0.limit"),
    ],
)
def test_a_bad_budget_is_refused_at_load_naming_its_field(
    settings: Settings, budget: str, said: str
) -> None:
    rules_with(settings, budget)

    with pytest.raises(RuleError, match=said):
        Rules.load(settings.rules_path)
    with pytest.raises(RuleError, match=said):
        load_budgets(settings.rules_path)


def test_budgets_are_read_with_their_defaults(settings: Settings) -> None:
    rules_with(settings, "{scope: rule, name: nightly, period: month, limit: 50}")

    [budget] = load_budgets(settings.rules_path)

    assert budget == Budget(scope="rule", name="nightly", period="month", limit=50.0)
    assert budget.on_exceed == "wait"
    assert budget.key_of(Facts(rule="nightly", owner="rule:nightly")) == "nightly"
    assert budget.key_of(Facts(rule="other", owner="rule:other")) is None
    assert load_budgets(settings.rules_path.with_name("none.yaml")) == ()


def test_the_example_rules_budgets_read_as_written_once_uncommented() -> None:
    text = (EXAMPLES / "ephemerid.yaml").read_text()
    lines = [
        line.removeprefix("# ") if line.startswith(("# budgets:", "#   - ")) else line
        for line in text.splitlines()
    ]

    rules = Rules.parse("\n".join(lines), base=EXAMPLES)

    assert [(b.scope, b.name, b.period, b.limit, b.on_exceed) for b in rules.parsed.budgets] == [
        ("overall", "*", "month", 500.0, "refuse"),
        ("rule", "nightly-retrain", "day", 20.0, "wait"),
        ("owner", "*", "day", 50.0, "wait"),
        ("sweep", "*", "month", 100.0, "wait"),
    ]


# -- compute.max_cost --------------------------------------------------------------------------


def test_a_job_that_could_cost_more_than_its_max_cost_is_refused_with_the_numbers(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    spec = spec_for(code_dir, compute={"max_cost": 5, "max_runtime": "1h"})

    with service_with(settings, local_price_per_hour=36.0) as service:
        with pytest.raises(SpecError) as refused:
            service.submit(spec)
        assert service.list() == []  # nothing stored, nothing rented

    said = str(refused.value)
    assert "could cost $39.0000" in said and "max_cost $5" in said  # 36/h x (3600 + 300) s
    assert "at most 200s" in said and "on_max_cost: cap" in said


def test_a_job_may_have_its_runtime_capped_to_fit_its_max_cost_and_says_so(
    settings: Settings, code_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(code_dir, "print('hi')\n")
    spec = spec_for(code_dir, compute={"max_cost": 5, "max_runtime": "1h", "on_max_cost": "cap"})

    with service_with(settings, local_price_per_hour=36.0) as service:
        done = run(service, spec)
        launch = json.loads(get_bytes(service.artifacts, names.run_key(done.id, names.JOB_FILE)))

    assert done.state is JobState.SUCCEEDED
    assert done.spec.compute.max_runtime == 200 and launch["max_runtime_s"] == 200
    assert done.cost_limit is not None and done.cost_limit["capped"] is True
    assert "capped from 3600s to 200s" in done.cost_limit["note"]
    env = {"EPHEMERID_HOME": str(settings.home), "COLUMNS": "300", "NO_COLOR": "1"}
    status = run_eph(("status", done.id), env, tmp_path, monkeypatch)
    assert "max_cost max_runtime capped from 3600s to 200s" in status.stderr


def test_a_sweep_whose_trials_could_pass_their_max_cost_is_refused_at_submit(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, TRAIN, "train.py")
    data = sweep_data(
        code_dir,
        {"method": "grid", "space": {"lr": [0.1, 0.2]}, "metric": "val_loss"},
        trial={"compute": {"max_runtime": "1h", "max_cost": 1}},
    )
    with service_with(settings, local_price_per_hour=36.0) as service:
        with pytest.raises(SpecError, match=r"compute\.max_cost: the job could cost"):
            service.submit(validate_sweep(data))
        assert service.list() == []


def test_a_running_job_whose_cost_reaches_max_cost_is_stopped_by_the_reaper(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    spec = held_spec(code_dir, gate, compute={"max_cost": 100, "on_max_cost": "cap"})
    # $1 a second: the job is capped to 100 s, and the reaper's clock is moved, never waited on
    with service_with(settings, local_price_per_hour=3600.0, setup_allowance_s=0) as service:
        job = service.submit(spec).job
        gate.pid()
        job = service.get(job.id)
        assert job.state is JobState.RUNNING and job.compute_requested_at is not None

        early = reap(service, now=job.compute_requested_at + timedelta(seconds=50))
        assert service.get(job.id).state is JobState.RUNNING, early
        reap(service, now=job.compute_requested_at + timedelta(seconds=150))
        stopped = service.get(job.id)

    assert stopped.state is JobState.FAILED
    assert "reached compute.max_cost $100" in stopped.reason
    assert stopped.compute_state is ComputeState.RELEASED


# -- budgets of the rules file -----------------------------------------------------------------


def spent_by(owner: str, cost: float) -> JobRecord:
    """A job ``owner`` ran today that cost ``cost``, as its record says."""
    now = utcnow()
    start = max(now - timedelta(seconds=60), period_start("day", now))
    held_h = max((now - start).total_seconds(), 1e-3) / 3600
    spec = validate_spec({"kind": "train", "code": ".", "entrypoint": "t.py"})
    return JobRecord(
        id=f"train-{owner[-3:]}000000000",
        key=f"spent-{owner}",
        spec=spec,
        source="api",
        owner=owner,
        backend="local",
        state=JobState.SUCCEEDED,
        compute_state=ComputeState.RELEASED,
        compute_requested_at=now - timedelta(seconds=held_h * 3600),
        started_at=now - timedelta(seconds=held_h * 3600),
        finished_at=now,
        released_at=now,
        price_per_hour=cost / held_h,
    )


def test_a_job_past_a_wait_budget_waits_saying_why_and_starts_when_there_is_room(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    spec = spec_for(code_dir, compute={"max_runtime": 60})  # could cost $0.60 at $36/h
    rules_with(settings, "{scope: overall, period: day, limit: 5, on_exceed: wait}")
    prices = {"local_price_per_hour": 36.0, "setup_allowance_s": 0}
    with service_with(settings, **prices) as service:
        service.store.create_if_absent(spent_by("cli:bob", 4.5))
        waiting = service.submit(spec).job
        reap(service)
        assert service.get(waiting.id).state is JobState.WAITING_FOR_CAPACITY
        assert waiting.state is JobState.WAITING_FOR_CAPACITY
        assert waiting.compute_state is ComputeState.NONE and waiting.next_try_at is not None
        assert "overall budget ($5 a day): $4.5000 spent this day" in waiting.reason
        assert "could cost $0.6000" in waiting.reason

        rules_with(settings, "{scope: overall, period: day, limit: 10, on_exceed: wait}")
        with service_with(settings, **prices) as raised:  # the limit raised, read at start
            job = raised.get(waiting.id)
            raised.store.update(job.evolve(next_try_at=utcnow() - timedelta(seconds=1)))
            reap(raised)  # the reaper looks at waiting jobs again
            [done] = settle(raised, [waiting.id], timeout=60)

    assert done.state is JobState.SUCCEEDED and done.price_per_hour == 36.0


def test_a_job_that_alone_could_pass_a_wait_budget_is_refused_not_left_waiting(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    rules_with(settings, "{scope: overall, period: day, limit: 1, on_exceed: wait}")
    with service_with(settings, local_price_per_hour=36.0, setup_allowance_s=0) as service:
        with pytest.raises(OverBudget, match=r"less than this job alone could cost \(\$6\.0000\)"):
            service.submit(spec_for(code_dir, compute={"max_runtime": "10m"}))
        assert service.list() == []


def test_a_job_past_a_refuse_budget_is_refused_naming_the_budget_and_the_figures(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    spec = spec_for(code_dir, compute={"max_runtime": 60})  # could cost $0.60 at $36/h
    rules_with(
        settings, "{scope: owner, name: 'cli:bob', period: day, limit: 1, on_exceed: refuse}"
    )
    with service_with(settings, local_price_per_hour=36.0, setup_allowance_s=0) as service:
        service.store.create_if_absent(spent_by("cli:bob", 0.9))
        with pytest.raises(OverBudget) as refused:
            service.submit(spec, owner="cli:bob")
        others = run(service, spec, owner="cli:ann")  # not under bob's budget
        stored = [j.owner for j in service.list()]

    said = str(refused.value)
    assert "budget of owner 'cli:bob' ($1 a day)" in said
    assert "$0.9000 spent this day" in said and "could cost $0.6000" in said
    assert others.state is JobState.SUCCEEDED and sorted(stored) == ["cli:ann", "cli:bob"]


def test_a_redelivered_event_never_counts_a_jobs_spend_twice(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    spec = spec_for(code_dir)
    budget = Budget(scope="owner", period="month", limit=100)
    assert budget.key_of(Facts(rule="", owner="cli:ann")) == "cli:ann"
    with service_with(settings, local_price_per_hour=36.0) as service:
        done = run(service, spec, key="upload-1", owner="cli:ann")
        now = utcnow()
        once = service.spent(budget, "cli:ann", now=now)
        service.complete(done.id)  # its result.json delivered again
        again = service.submit(spec, key="upload-1", owner="cli:ann")  # its event again
        twice = service.spent(budget, "cli:ann", now=now)

    assert not again.created and len(service.list()) == 1
    assert once == pytest.approx((done.held_s or 0) / 3600 * 36.0) and once > 0
    assert twice == once


def test_a_sweep_stops_launching_trials_when_its_budget_has_no_room_and_says_so(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, TRAIN, "train.py")
    # each trial could cost $0.03 ($3.60/h x 30 s): the first fits in $0.0301, a second never does
    rules_with(settings, "{scope: sweep, period: month, limit: 0.0301, on_exceed: wait}")
    data = sweep_data(
        code_dir,
        {
            "method": "grid",
            "space": {"lr": [0.1, 0.2, 0.3]},
            "max_parallel": 1,
            "metric": "val_loss",
        },
        trial={"compute": {"max_runtime": 30}},
    )
    with service_with(settings, local_price_per_hour=3.6, setup_allowance_s=0) as service:
        sweep = service.submit(validate_sweep(data), key="budgeted").job
        ended = drive(service, sweep.id)
        trials = service.sweep_trials(sweep.id)

    assert [t.state for t in trials] == [JobState.SUCCEEDED]
    assert ended.state is JobState.SUCCEEDED
    assert "stopped launching trials: the budget of sweep" in ended.reason
    assert "a trial could cost $0.0300" in ended.reason

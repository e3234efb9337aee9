"""Cost: a week of a small team's work on ephemerid, next to one GPU VM kept running all week.

Every price comes from the price table ephemerid records jobs with (``PriceTable`` in
``ephemerid.compute.prices``: the shipped ``prices.json``, or ``EPHEMERID_PRICE_TABLE``). Each job
pays for its run, for the minutes before the user's code starts (VM boot and setup: an
assumption, ``--setup-min``) and for the idle from ``result.json`` to confirmed release: measured
by the billed-idle benchmark when ``bench/results/billed_idle.json`` exists, else ``--idle-s``.
The persistent VM is the same SKU, on demand, 24 hours a day, 7 days a week. The week is laid
out as job records on a calendar and summed by ephemerid's own cost report (``ephemerid.costs``,
what ``eph cost --vs-persistent SKU`` prints), so the bench measures the code users read.

    python bench/cost.py
    python bench/cost.py --sku Standard_NC4as_T4_v3 --runs-per-day 4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import common

from ephemerid.compute.prices import PriceTable
from ephemerid.costs import CostReport, report
from ephemerid.record import ComputeState, JobRecord, JobState
from ephemerid.spec import validate_spec

GOAL_SAVED = 0.70
HOURS_PER_WEEK = 24 * 7
# Idle before compute is given back elsewhere, for comparison (BENCHMARKS.md gives sources).
OTHER_IDLE_S = {
    "Azure ML cluster scale-down default": 120.0,
    "a 5-min autostop (SkyPilot default, dstack)": 300.0,
}


@dataclass(frozen=True)
class Week:
    """What the team runs in a week: the assumptions, printed with the result."""

    workdays: int
    runs_per_day: int
    run_hours: tuple[float, ...]  # cycled through, one per training run
    scoring_nights: int
    scoring_hours: float
    setup_min: float
    idle_s: float
    idle_source: str

    @property
    def training_runs(self) -> list[float]:
        count = self.workdays * self.runs_per_day
        return [self.run_hours[i % len(self.run_hours)] for i in range(count)]

    @property
    def jobs(self) -> int:
        return len(self.training_runs) + self.scoring_nights

    @property
    def work_hours(self) -> float:
        return sum(self.training_runs) + self.scoring_nights * self.scoring_hours

    def billed_hours(self, idle_s: float | None = None) -> float:
        idle = self.idle_s if idle_s is None else idle_s
        per_job = self.setup_min / 60 + idle / 3600
        return self.work_hours + self.jobs * per_job


def measured_idle() -> tuple[float, str] | None:
    """Billed idle per job (seconds, result.json to confirmed release) from bench 1, if run."""
    data = common.read_result("billed_idle")
    if not data:
        return None
    results = data.get("results", {})
    if results.get("billed_idle_s") is None:
        return None
    note = results.get("billed_idle_note", "")
    return float(results["billed_idle_s"]), f"bench/results/billed_idle.json: {note}"


WEEK_START = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday


def week_records(week: Week, sku: str, price: float, spot: bool, idle_s: float) -> list[JobRecord]:
    """The week's jobs as the service would leave their records: training runs one after another
    from 09:00 on each workday, a scoring job at 02:00 each night; each held for its setup, its
    run and its idle, at ``price``."""
    spec = validate_spec(
        {"kind": "train", "code": ".", "entrypoint": "train.py", "compute": {"gpus": 1}}
    )
    runs = iter(week.training_runs)
    jobs: list[tuple[datetime, float]] = []
    for day in range(week.workdays):
        at = WEEK_START + timedelta(days=day, hours=9)
        for _ in range(week.runs_per_day):
            hours = next(runs)
            jobs.append((at, hours))
            at += timedelta(hours=hours, minutes=week.setup_min, seconds=idle_s)
    for night in range(week.scoring_nights):
        jobs.append((WEEK_START + timedelta(days=night, hours=2), week.scoring_hours))
    records = []
    for n, (at, hours) in enumerate(jobs):
        started = at + timedelta(minutes=week.setup_min)
        finished = started + timedelta(hours=hours)
        records.append(
            JobRecord(
                id=f"train-{n:012d}",
                key=f"bench-{n}",
                spec=spec,
                source="bench",
                backend="azure-vm",
                state=JobState.SUCCEEDED,
                compute_state=ComputeState.RELEASED,
                created_at=at,
                compute_requested_at=at,
                live_at=at,
                started_at=started,
                finished_at=finished,
                released_at=finished + timedelta(seconds=idle_s),
                sku=sku,
                spot=spot,
                price_per_hour=price,
            )
        )
    return records


def week_report(
    week: Week, sku: str, price: float, spot: bool, idle_s: float, prices: PriceTable
) -> CostReport:
    return report(
        week_records(week, sku, price, spot, idle_s),
        since=WEEK_START,
        until=WEEK_START + timedelta(hours=HOURS_PER_WEEK),
        vs_persistent=sku,
        prices=prices,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sku", default="Standard_NC24ads_A100_v4")
    parser.add_argument("--workdays", type=int, default=5)
    parser.add_argument("--runs-per-day", type=int, default=3)
    parser.add_argument("--run-hours", default="1,2,3", help="training run lengths, cycled")
    parser.add_argument("--scoring-nights", type=int, default=7)
    parser.add_argument("--scoring-hours", type=float, default=0.5)
    parser.add_argument("--setup-min", type=float, default=3.0, help="billed boot and setup")
    parser.add_argument("--idle-s", type=float, default=60.0, help="if bench 1 has not run")
    args = parser.parse_args()

    prices = PriceTable.load()
    on_demand = prices.per_hour(args.sku, spot=False)
    spot = prices.per_hour(args.sku, spot=True)
    if on_demand is None:
        raise SystemExit(f"the price table does not know {args.sku}: pass --sku")
    idle = measured_idle() or (args.idle_s, "assumed (bench 1 has not run): --idle-s")
    week = Week(
        workdays=args.workdays,
        runs_per_day=args.runs_per_day,
        run_hours=tuple(float(h) for h in args.run_hours.split(",")),
        scoring_nights=args.scoring_nights,
        scoring_hours=args.scoring_hours,
        setup_min=args.setup_min,
        idle_s=idle[0],
        idle_source=idle[1],
    )
    # The week as job records on a calendar (a Monday 00:00 UTC to the next), priced and summed
    # by ephemerid's own cost report, next to one persistent VM of the SKU over the same week.
    reported = week_report(week, args.sku, on_demand, False, week.idle_s, prices)
    assert reported.persistent is not None
    persistent = reported.persistent.cost_usd
    lines: list[tuple[str, float, float]] = [
        ("one persistent VM, on demand, all week", reported.persistent.hours, persistent),
        (
            f"ephemerid, on demand (idle {week.idle_s:.0f} s/job)",
            reported.total.gpu_h,
            reported.total.cost_usd,
        ),
    ]
    for name, other in OTHER_IDLE_S.items():
        total = week_report(week, args.sku, on_demand, False, other, prices).total
        lines.append((f"same, idle {other:.0f} s/job: {name}", total.gpu_h, total.cost_usd))
    if spot is not None:
        total = week_report(week, args.sku, spot, True, week.idle_s, prices).total
        lines.append(("ephemerid, spot (no evictions counted)", total.gpu_h, total.cost_usd))
    # the report's figures against the plain arithmetic of the week (a check, not a result)
    assert abs(reported.total.held_h - week.billed_hours()) < 1e-6, reported.total.held_h
    rows = [
        [name, f"{hours:.1f}", f"${cost:,.2f}", f"{1 - cost / persistent:.1%}"]
        for name, hours, cost in lines
    ]
    saved = 1 - lines[1][2] / persistent
    verdict = common.verdict(saved >= GOAL_SAVED)
    common.table(
        f"cost of one week on {args.sku} (${on_demand}/h on demand"
        + (f", ${spot}/h spot" if spot is not None else "")
        + f"; goal >= {GOAL_SAVED:.0%} saved): {saved:.1%} saved, {verdict}",
        ["", "billed GPU hours", "cost", "saved"],
        rows,
    )
    assumptions = {
        "sku": args.sku,
        "price_on_demand_per_hour": on_demand,
        "price_spot_per_hour": spot,
        "currency": prices.currency,
        "training_runs": f"{week.workdays} workdays x {week.runs_per_day} runs of "
        f"{args.run_hours} h (cycled): {len(week.training_runs)} runs, "
        f"{sum(week.training_runs):.1f} h",
        "batch_scoring": f"{week.scoring_nights} nights x {week.scoring_hours} h",
        "setup_min_per_job": week.setup_min,
        "idle_s_per_job": round(week.idle_s, 2),
        "idle_source": week.idle_source,
        "nights_and_weekends": "idle: nothing runs, nothing is billed on ephemerid",
        "persistent_vm": f"{HOURS_PER_WEEK} h on demand",
    }
    common.table(
        "assumptions", ["", "value"], [[k, v] for k, v in assumptions.items()], numbers=False
    )
    results: dict[str, Any] = {
        "assumptions": assumptions,
        "jobs": week.jobs,
        "work_hours": week.work_hours,
        "lines": [
            {
                "what": n,
                "billed_hours": round(h, 3),
                "cost": round(c, 2),
                "saved": round(1 - c / persistent, 4),
            }
            for n, h, c in lines
        ],
        "saved": round(saved, 4),
        "goal_saved": GOAL_SAVED,
        "goal_met": saved >= GOAL_SAVED,
        "report": reported.to_json(),  # the on-demand week as `eph cost --json` gives it
    }
    common.Run("cost", vars(args)).save(results)


if __name__ == "__main__":
    main()

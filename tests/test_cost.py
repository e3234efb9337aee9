"""What jobs cost, from their records: each backend's prices, the parts of a rental, windows,
groupings, the daily series and the persistent machine, and every bad input of a report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drive import run, service_with, spec_for, write_script
from ephemerid.compute.prices import PriceTable
from ephemerid.costs import bill, report
from ephemerid.costs.periods import parse_time, window
from ephemerid.errors import BadInput
from ephemerid.record import ComputeState, JobRecord, JobState
from ephemerid.settings import Settings
from ephemerid.spec import validate_spec

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC
T4, A100 = "Standard_NC4as_T4_v3", "Standard_NC24ads_A100_v4"
PRICES = PriceTable.load()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rented(
    job_id: str,
    *,
    requested: float,
    started: float | None,
    finished: float | None,
    released: float | None,
    backend: str = "azure-vm",
    sku: str = T4,
    spot: bool = False,
    price: float | None = 0.526,
    tail_s: float = 0.0,
    gpus: int = 1,
    **fields: Any,
) -> JobRecord:
    """A record as the service leaves it after each transition (times in minutes after T0)."""
    spec = validate_spec(
        {"kind": "train", "code": ".", "entrypoint": "t.py", "compute": {"gpus": gpus}}
    )
    done = released is not None
    return JobRecord(
        id=job_id,
        key=job_id,
        spec=spec,
        source=fields.pop("source", "api"),
        backend=backend,
        state=JobState.SUCCEEDED if done else JobState.RUNNING,
        compute_state=ComputeState.RELEASED if done else ComputeState.LIVE,
        created_at=at(requested),
        compute_requested_at=at(requested),
        live_at=at(requested),
        started_at=None if started is None else at(started),
        finished_at=None if finished is None else at(finished),
        released_at=None if released is None else at(released),
        sku=sku,
        spot=spot,
        price_per_hour=price,
        billed_tail_s=tail_s,
        **fields,
    )


# -- one job's bill, on each backend ----------------------------------------------------------


def test_an_azure_vm_job_is_priced_from_the_table_on_demand_and_on_spot() -> None:
    on_demand = rented(
        "a", requested=0, started=3, finished=63, released=64, price=PRICES.per_hour(T4, False)
    )
    spot = rented(
        "b",
        requested=0,
        started=3,
        finished=63,
        released=64,
        spot=True,
        price=PRICES.per_hour(T4, True),
    )

    for job, rate in ((on_demand, 0.526), (spot, 0.0526)):
        found = bill(job, at(600))
        parts = found.seconds(at(0), at(600))
        assert parts == {"setup": 180.0, "run": 3600.0, "idle": 60.0, "earlier": 0.0}
        assert found.total() == pytest.approx(64 / 60 * rate)
        assert found.total() == pytest.approx(
            job.cost_usd or 0, abs=1e-6
        )  # the record's own figure


def test_an_azure_ml_jobs_billed_scale_down_tail_counts_as_idle() -> None:
    job = rented(
        "aml",
        requested=0,
        started=2,
        finished=12,
        released=13,
        backend="azure-ml",
        tail_s=120,
        price=2 * 0.526,
    )

    parts = bill(job, at(600)).seconds(at(0), at(600))

    assert parts["idle"] == 60.0 + 120.0  # result to release, then the cluster's idle nodes
    assert bill(job, at(600)).total() == pytest.approx((13 * 60 + 120) / 3600 * 2 * 0.526)
    assert bill(job, at(600)).total() == pytest.approx(job.cost_usd or 0, abs=1e-6)


def test_an_evicted_jobs_earlier_rental_is_counted_once_beside_the_last() -> None:
    earlier = {
        "sku": T4,
        "spot": True,
        "held_s": 600.0,
        "cost_usd": 600 / 3600 * 0.0526,
        "why": "evicted",
    }
    job = rented(
        "ev",
        requested=20,
        started=21,
        finished=31,
        released=32,
        spot=True,
        price=0.0526,
        earlier_compute=[earlier],
        evictions=1,
    )
    job = job.evolve(created_at=at(0))

    found = bill(job, at(600))

    assert found.seconds(at(0), at(600))["earlier"] == 600.0
    assert found.total() == pytest.approx((600 + 12 * 60) / 3600 * 0.0526)
    assert found.total() == pytest.approx(job.cost_usd or 0, abs=1e-6)


def test_a_job_still_running_is_billed_up_to_now_and_one_never_started_is_all_setup() -> None:
    running = rented("r", requested=0, started=5, finished=None, released=None)
    booting = rented("s", requested=0, started=None, finished=None, released=None)

    assert bill(running, at(65)).seconds(at(0), at(65))["run"] == 3600.0
    assert bill(booting, at(10)).seconds(at(0), at(10)) == {
        "setup": 600.0,
        "run": 0.0,
        "idle": 0.0,
        "earlier": 0.0,
    }


def test_a_local_job_with_a_price_costs_its_held_time_at_that_price(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    with service_with(settings, local_price_per_hour=36.0) as service:
        done = run(service, spec_for(code_dir))
        found = report(
            service.list(),
            since=at(-(10**6)),
            until=done.released_at + timedelta(hours=1),
            prices=PRICES,
        )

    assert done.price_per_hour == 36.0 and done.held_s is not None
    assert found.total.cost_usd == pytest.approx(done.held_s / 3600 * 36.0)
    assert found.total.held_h == pytest.approx(done.held_s / 3600)
    assert found.total.run_h == pytest.approx((done.runtime_s or 0) / 3600)
    assert found.total.unpriced_h == 0


# -- a report over a window -------------------------------------------------------------------


def test_a_job_across_midnight_is_split_between_the_days_and_the_window_cuts_it() -> None:
    job = rented(
        "night", requested=13 * 60, started=13 * 60, finished=15 * 60, released=15 * 60, price=1.0
    )  # 23:00 to 01:00

    whole = report([job], since=at(-600), until=at(24 * 60), prices=PRICES)
    cut = report([job], since=at(14 * 60), until=at(24 * 60), prices=PRICES)  # from 00:00

    assert dict(whole.daily) == {"2026-11-30": pytest.approx(1.0), "2026-12-01": pytest.approx(1.0)}
    assert whole.total.cost_usd == pytest.approx(2.0)
    assert sum(cost for _, cost in whole.daily) == pytest.approx(whole.total.cost_usd)
    assert cut.total.cost_usd == pytest.approx(1.0) and cut.total.run_h == pytest.approx(1.0)
    assert [day for day, _ in cut.daily] == ["2026-12-01"]


def test_jobs_group_by_rule_sweep_owner_backend_and_day() -> None:
    sweep = rented("sweep-1", requested=0, started=None, finished=None, released=None, price=None)
    sweep = sweep.evolve(sweep={"spec": {"name": "lin"}}, compute_requested_at=None)
    jobs = [
        rented(
            "a", requested=0, started=0, finished=60, released=60, price=1.0, owner="rule:nightly"
        ),
        rented(
            "b",
            requested=0,
            started=0,
            finished=30,
            released=30,
            price=2.0,
            owner="cli:ann",
            parent="sweep-1",
        ),
        rented(
            "c",
            requested=24 * 60,
            started=24 * 60,
            finished=24 * 60 + 60,
            released=24 * 60 + 60,
            backend="local",
            sku="",
            price=None,
            owner="cli:ann",
            source="blob incoming/x.csv (rule upload)",
        ),
        sweep,
    ]
    since, until = at(-60), at(3 * 24 * 60)

    def grouped(by: str) -> dict[str, tuple[int, float]]:
        found = report(jobs, since=since, until=until, by=by, prices=PRICES)
        return {g.key: (g.jobs, round(g.cost_usd, 6)) for g in found.groups}

    assert grouped("rule") == {"nightly": (1, 1.0), "-": (1, 1.0), "upload": (1, 0.0)}
    assert grouped("sweep") == {"sweep-1": (1, 1.0), "-": (2, 1.0)}
    assert grouped("owner") == {"rule:nightly": (1, 1.0), "cli:ann": (2, 1.0)}
    assert grouped("backend") == {"azure-vm": (2, 2.0), "local": (1, 0.0)}
    days = grouped("day")
    assert days["2026-11-30"] == (2, 2.0) and days["2026-12-01"] == (1, 0.0)
    assert report(jobs, since=since, until=until, prices=PRICES).total.jobs == 3  # not the sweep


def test_the_persistent_machine_costs_its_price_for_every_hour_of_the_window() -> None:
    jobs = [
        rented("a", requested=0, started=3, finished=63, released=64, sku=A100, price=3.673),
        rented(
            "b",
            requested=600,
            started=601,
            finished=721,
            released=722,
            sku=A100,
            spot=True,
            price=0.7346,
        ),
    ]
    since, until = at(-600), at(-600 + 7 * 24 * 60)  # one week

    on_demand = report(jobs, since=since, until=until, vs_persistent=A100, prices=PRICES)
    spot = report(
        jobs, since=since, until=until, vs_persistent=A100.lower(), spot=True, prices=PRICES
    )

    spent = 64 / 60 * 3.673 + 122 / 60 * 0.7346  # computed here from the records' own times
    assert on_demand.total.cost_usd == pytest.approx(spent)
    assert on_demand.persistent is not None and spot.persistent is not None
    assert on_demand.persistent.hours == 168.0
    assert on_demand.persistent.cost_usd == pytest.approx(168 * 3.673)
    assert on_demand.persistent.saving_usd == pytest.approx(168 * 3.673 - spent)
    assert on_demand.persistent.saving_share == pytest.approx(1 - spent / (168 * 3.673))
    assert spot.persistent.cost_usd == pytest.approx(168 * 0.7346)
    assert spot.persistent.sku == A100  # as the table spells it, whatever the case asked
    said = " ".join(on_demand.assumptions)
    assert "168.00 h" in said and "$3.673/h on-demand" in said and "2026-11-30T00:00:00Z" in said
    assert on_demand.to_json()["persistent"]["saving_usd"] == pytest.approx(168 * 3.673 - spent)
    daily = on_demand.to_json()["daily"]  # a chart's two lines: spend, and the persistent VM
    assert [d["date"] for d in daily][:2] == ["2026-11-30", "2026-12-01"] and len(daily) == 7
    assert all(d["persistent_usd"] == pytest.approx(24 * 3.673) for d in daily)
    assert sum(d["persistent_usd"] for d in daily) == pytest.approx(168 * 3.673)
    assert sum(d["cost_usd"] for d in daily) == pytest.approx(spent)


def test_reading_a_report_twice_gives_the_same_figures() -> None:
    jobs = [rented("a", requested=0, started=3, finished=63, released=64)]

    first = report(jobs, since=at(-60), until=at(600), by="day", prices=PRICES, now=at(600))
    again = report(jobs, since=at(-60), until=at(600), by="day", prices=PRICES, now=at(600))

    assert first == again and first.to_json() == again.to_json()


# -- bad input ---------------------------------------------------------------------------------


def test_an_unknown_persistent_sku_is_refused_with_the_close_names() -> None:
    with pytest.raises(BadInput, match=r"'Standard_NC4as'.*did you mean.*Standard_NC4as_T4_v3"):
        report([], since=at(0), until=at(60), vs_persistent="Standard_NC4as", prices=PRICES)


def test_an_unknown_grouping_is_refused_with_the_ones_there_are() -> None:
    with pytest.raises(BadInput, match="--by: 'gpu' is not a grouping: use one of rule, sweep"):
        report([], since=at(0), until=at(60), by="gpu", prices=PRICES)


@pytest.mark.parametrize("text", ["7x", "yesterday", "-3d", "2026-13-01", ""])
def test_a_malformed_since_is_refused_with_the_format(text: str) -> None:
    with pytest.raises(
        BadInput, match=r"--since: .* is not a time: write a duration back from now \(30m"
    ):
        parse_time(text, at(0))


def test_since_and_until_read_durations_and_dates_and_must_be_in_order() -> None:
    assert window("7d", None, at(0)) == (at(-7 * 24 * 60), at(0))
    assert window("2026-11-29", "2026-11-30T08:00Z", at(0)) == (at(-34 * 60), at(-120))
    with pytest.raises(BadInput, match="is not before --until"):
        window("1h", "2h", at(0))


@pytest.mark.parametrize("price", ["-0.5", '"abc"', "NaN"])
def test_a_price_table_with_a_negative_or_non_numeric_price_is_refused(
    tmp_path: Path, price: str
) -> None:
    table = tmp_path / "prices.json"
    table.write_text('{"skus": {"Standard_X": {"on_demand": ' + price + "}}}")

    with pytest.raises(BadInput, match=r"price table .* is not valid"):
        PriceTable.load(table)


@pytest.mark.parametrize("value", ["-1", "abc", "inf"])
def test_a_negative_or_non_numeric_local_price_is_refused_at_start(value: str) -> None:
    with pytest.raises(
        BadInput, match=r"EPHEMERID_LOCAL_PRICE_PER_HOUR=.* USD per hour, 0 or more"
    ):
        Settings.from_env({"EPHEMERID_LOCAL_PRICE_PER_HOUR": value})

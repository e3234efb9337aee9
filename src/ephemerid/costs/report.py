"""The cost report: what the jobs of a period cost, grouped, by day, and next to a persistent
machine of one SKU kept on all the period.

``report`` is a pure function of job records, a window and a price table: the CLI (``eph cost``)
and the dashboard's cost page read the same ``CostReport`` (``to_json()`` is its JSON).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ephemerid.compute.prices import PriceTable
from ephemerid.costs.bill import JobBill, bill
from ephemerid.costs.periods import days, window
from ephemerid.errors import BadInput
from ephemerid.record import JobRecord, utcnow

GROUPINGS = ("rule", "sweep", "owner", "backend", "day")
NONE_KEY = "-"  # a job with no rule (submitted by hand), no sweep, no owner


@dataclass(frozen=True)
class Line:
    """Spend and time of some jobs over a window: the whole report, a group, or a day."""

    key: str
    jobs: int = 0
    cost_usd: float = 0.0
    gpu_h: float = 0.0
    setup_h: float = 0.0
    run_h: float = 0.0
    idle_h: float = 0.0
    earlier_h: float = 0.0  # rentals given up before the job's last one (evictions)
    unpriced_h: float = 0.0  # held with no price: local compute at rate 0, an unknown SKU

    @property
    def held_h(self) -> float:
        return self.setup_h + self.run_h + self.idle_h + self.earlier_h

    @property
    def setup_share(self) -> float | None:
        return self.setup_h / self.held_h if self.held_h else None

    @property
    def idle_share(self) -> float | None:
        return self.idle_h / self.held_h if self.held_h else None

    def to_json(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 6)

        return {
            "key": self.key,
            "jobs": self.jobs,
            "cost_usd": r(self.cost_usd),
            "held_h": r(self.held_h),
            "gpu_h": r(self.gpu_h),
            "setup_h": r(self.setup_h),
            "run_h": r(self.run_h),
            "idle_h": r(self.idle_h),
            "earlier_h": r(self.earlier_h),
            "unpriced_h": r(self.unpriced_h),
            "setup_share": r(self.setup_share),
            "idle_share": r(self.idle_share),
        }


@dataclass(frozen=True)
class Persistent:
    """One always-on machine of ``sku`` over the report's window, and what not having it saved."""

    sku: str
    spot: bool
    price_per_hour: float
    hours: float
    cost_usd: float
    saving_usd: float  # the persistent machine's cost less what the jobs cost

    @property
    def saving_share(self) -> float | None:
        return self.saving_usd / self.cost_usd if self.cost_usd else None

    def to_json(self) -> dict[str, Any]:
        share = self.saving_share
        return {
            "sku": self.sku,
            "spot": self.spot,
            "price_per_hour": self.price_per_hour,
            "hours": round(self.hours, 6),
            "cost_usd": round(self.cost_usd, 6),
            "saving_usd": round(self.saving_usd, 6),
            "saving_share": None if share is None else round(share, 6),
        }


@dataclass(frozen=True)
class CostReport:
    since: datetime
    until: datetime
    by: str | None
    total: Line
    groups: tuple[Line, ...] = ()  # by ``by``, most spent first (by day: in date order)
    daily: tuple[tuple[str, float], ...] = ()  # (YYYY-MM-DD, USD), every day of the window
    persistent: Persistent | None = None
    currency: str = "USD"
    assumptions: tuple[str, ...] = field(default_factory=tuple)

    def daily_json(self) -> list[dict[str, Any]]:
        """Each day's spend, and what the persistent machine cost that day (its line on a chart)."""
        rate = self.persistent.price_per_hour if self.persistent else None
        found = []
        for (day, cost), (start, end) in zip(self.daily, days(self.since, self.until), strict=True):
            entry: dict[str, Any] = {"date": day, "cost_usd": round(cost, 6)}
            if rate is not None:
                entry["persistent_usd"] = round((end - start).total_seconds() / 3600 * rate, 6)
            found.append(entry)
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "by": self.by,
            "currency": self.currency,
            "total": self.total.to_json(),
            "groups": [g.to_json() for g in self.groups],
            "daily": self.daily_json(),
            "persistent": self.persistent.to_json() if self.persistent else None,
            "assumptions": list(self.assumptions),
        }


def report(
    records: Iterable[JobRecord],
    *,
    since: datetime,
    until: datetime,
    by: str | None = None,
    vs_persistent: str | None = None,
    spot: bool = False,
    prices: PriceTable,
    now: datetime | None = None,
) -> CostReport:
    """What ``records``' compute cost in [since, until), grouped ``by`` one of GROUPINGS, with
    one always-on ``vs_persistent`` machine (on-demand, or ``spot``) over the same window."""
    if by is not None and by not in GROUPINGS:
        raise BadInput(f"--by: '{by}' is not a grouping: use one of {', '.join(GROUPINGS)}")
    persistent_price = _persistent_price(prices, vs_persistent, spot) if vs_persistent else None
    if vs_persistent:  # as the table spells it
        vs_persistent = next(
            (s for s in prices.skus if s.lower() == vs_persistent.lower()), vs_persistent
        )
    bills = [b for b in bills_of(records, now or utcnow()) if b.touches(since, until)]
    total = line("total", bills, since, until)
    daily = tuple((s.strftime("%Y-%m-%d"), _cost(bills, s, e)) for s, e in days(since, until))
    persistent = None
    if vs_persistent and persistent_price is not None:
        hours = (until - since).total_seconds() / 3600
        cost = hours * persistent_price
        persistent = Persistent(
            vs_persistent, spot, persistent_price, hours, cost, cost - total.cost_usd
        )
    return CostReport(
        since=since,
        until=until,
        by=by,
        total=total,
        groups=_groups(bills, by, since, until),
        daily=daily,
        persistent=persistent,
        currency=prices.currency,
        assumptions=_assumptions(since, until, total, persistent),
    )


def report_from(
    records: Iterable[JobRecord],
    *,
    since: str | None = "7d",
    until: str | None = None,
    by: str | None = None,
    vs_persistent: str | None = None,
    spot: bool = False,
    prices: PriceTable,
    now: datetime | None = None,
) -> CostReport:
    """``report`` over a window written as ``eph cost`` takes it (``7d``, a date): what the CLI
    and a page's query string both call; BadInput naming the flag when one is wrong."""
    now = now or utcnow()
    start, end = window(since, until, now)
    return report(
        records,
        since=start,
        until=end,
        by=by,
        vs_persistent=vs_persistent,
        spot=spot,
        prices=prices,
        now=now,
    )


def bills_of(records: Iterable[JobRecord], now: datetime) -> list[JobBill]:
    """A bill for each job that rents compute (sweeps and fanned-out jobs rent none)."""
    records = list(records)
    sweeps = {r.id for r in records if r.sweep is not None}
    return [
        bill(r, now, r.parent if r.parent in sweeps else "") for r in records if not r.makes_jobs
    ]


def line(key: str, bills: Iterable[JobBill], since: datetime, until: datetime) -> Line:
    """``bills`` summed over [since, until)."""
    jobs, cost, gpu_h, unpriced_h = 0, 0.0, 0.0, 0.0
    parts = dict.fromkeys(("setup", "run", "idle", "earlier"), 0.0)
    for b in bills:
        if not b.touches(since, until):
            continue
        jobs += 1
        seconds = b.seconds(since, until)
        for part, value in seconds.items():
            parts[part] += value / 3600
        held_h = sum(seconds.values()) / 3600
        gpu_h += held_h * b.gpus
        cost += b.cost(since, until)
        if not b.priced:
            unpriced_h += held_h
    return Line(
        key,
        jobs,
        cost,
        gpu_h,
        parts["setup"],
        parts["run"],
        parts["idle"],
        parts["earlier"],
        unpriced_h,
    )


def _cost(bills: Iterable[JobBill], since: datetime, until: datetime) -> float:
    return sum(b.cost(since, until) for b in bills)


def _groups(
    bills: list[JobBill], by: str | None, since: datetime, until: datetime
) -> tuple[Line, ...]:
    if by is None:
        return ()
    if by == "day":
        return tuple(line(s.strftime("%Y-%m-%d"), bills, s, e) for s, e in days(since, until))
    keyed: dict[str, list[JobBill]] = {}
    for b in bills:
        keyed.setdefault(str(getattr(b, by)) or NONE_KEY, []).append(b)
    lines = [line(key, group, since, until) for key, group in keyed.items()]
    return tuple(sorted(lines, key=lambda g: (-g.cost_usd, -g.held_h, g.key)))


def _persistent_price(prices: PriceTable, sku: str, spot: bool) -> float:
    price = prices.per_hour(sku, spot)
    if price is not None:
        return price
    if any(s.lower() == sku.lower() for s in prices.skus):  # known, but not at that rate
        raise BadInput(
            f"--vs-persistent: the price table has no {'spot' if spot else 'on-demand'} price for "
            f"'{sku}': drop --spot, or add it to the table (EPHEMERID_PRICE_TABLE)"
        )
    close = difflib.get_close_matches(sku, list(prices.skus), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(prices.skus)}"
    raise BadInput(
        f"--vs-persistent: SKU '{sku}' is not in the price table: {hint} "
        "(or add it to your own table: EPHEMERID_PRICE_TABLE)"
    )


def _assumptions(
    since: datetime, until: datetime, total: Line, persistent: Persistent | None
) -> tuple[str, ...]:
    found = [
        f"period: {since:%Y-%m-%dT%H:%M:%SZ} to {until:%Y-%m-%dT%H:%M:%SZ} (UTC), "
        f"{(until - since).total_seconds() / 3600:.2f} h",
        "jobs: at the price each job's compute was rented at (recorded when it went live), "
        "for the time it was held in the period: setup, run, and idle until the release "
        "is confirmed (with Azure ML's billed scale-down tail)",
    ]
    if total.unpriced_h:
        found.append(
            f"unpriced: {total.unpriced_h:.4f} h held had no price (local compute with "
            "EPHEMERID_LOCAL_PRICE_PER_HOUR unset or 0, or a SKU the price table lacks) and "
            "count as $0"
        )
    if persistent is not None:
        rate = "spot" if persistent.spot else "on-demand"
        found.append(
            f"persistent: one {persistent.sku} kept on all {persistent.hours:.2f} h of the period "
            f"at ${persistent.price_per_hour}/h {rate} (the price table), no discount "
            "(reservations, savings plans) and no disk, network or licence costs counted on "
            "either side; jobs that ran at once would need more than one such machine"
        )
    return tuple(found)

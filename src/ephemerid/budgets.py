"""Budgets: spend limits per rule, sweep, owner and overall, per day or month (``budgets:`` in
ephemerid.yaml), and ``compute.max_cost`` at submit.

Spend is counted from the job records (``ephemerid.costs``: each job's compute for the time it
was held in the period, at its recorded price), never from a counter an event adds to, so a
redelivered event never counts twice. A job that could take a budget past its limit (what is
spent this period plus its own worst case: price x (max_runtime + the setup allowance)) waits
(``on_exceed: wait``: WAITING_FOR_CAPACITY with the budget in its reason, looked at again by
each reaper pass) or is refused (``on_exceed: refuse``: at submit, nothing stored or rented).
A sweep stops launching trials once its budget is spent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ephemerid import transitions
from ephemerid.compute.prices import PriceTable
from ephemerid.costs.bill import JobBill, rule_from
from ephemerid.costs.limits import CostLimit, Price, fit, price_of, worst_cost
from ephemerid.costs.periods import period_end, period_start
from ephemerid.costs.report import bills_of
from ephemerid.errors import NotFound, OverBudget, RuleError, SpecError
from ephemerid.record import JobRecord, JobState, utcnow
from ephemerid.spec import JobSpec, parse_document
from ephemerid.steps import ServiceSteps
from ephemerid.validation import explain

RECHECK = timedelta(seconds=60)  # how soon a job waiting on a budget is looked at again
EACH = "*"


class Budget(BaseModel):
    """One line of ``budgets:``. ``name``: the rule, sweep (id or name) or owner it limits;
    left out (or ``*``), each rule, sweep or owner has a budget of its own of that size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Literal["overall", "rule", "sweep", "owner"]
    name: Annotated[str, Field(min_length=1, max_length=256)] = EACH
    period: Literal["day", "month"]
    limit: Annotated[float, Field(gt=0, allow_inf_nan=False)]  # USD
    on_exceed: Literal["wait", "refuse"] = "wait"

    @model_validator(mode="after")
    def _overall_names_nothing(self) -> Budget:
        if self.scope == "overall" and self.name != EACH:
            raise ValueError(f"an overall budget names no {self.name!r}: drop its name")
        return self

    def key_of(self, facts: Facts) -> str | None:
        """The spend ``facts``' job counts in under this budget; None if it is not under it."""
        if self.scope == "overall":
            return "overall"
        if self.scope == "sweep":
            if not facts.sweep or self.name not in (EACH, facts.sweep, facts.sweep_name):
                return None
            return facts.sweep
        value = facts.rule if self.scope == "rule" else facts.owner
        return value if value and self.name in (EACH, value) else None

    def label(self, key: str) -> str:
        what = "overall budget" if self.scope == "overall" else f"budget of {self.scope} '{key}'"
        return f"{what} (${self.limit:g} a {self.period})"


@dataclass(frozen=True)
class Facts:
    """What a budget needs to know of a job: the rule that made it, its sweep, its owner."""

    rule: str
    owner: str
    sweep: str = ""
    sweep_name: str = ""


@dataclass(frozen=True)
class Over:
    """A budget a job would take past its limit."""

    budget: Budget
    key: str
    spent: float
    could_cost: float | None

    @property
    def refused(self) -> bool:
        """Refused, not waiting: a refusing budget, or a job that alone could pass the limit
        (waiting would never give it room)."""
        alone = self.could_cost is not None and self.could_cost > self.budget.limit
        return self.budget.on_exceed == "refuse" or alone

    def reason(self) -> str:
        b = self.budget
        if self.could_cost is not None and self.could_cost > b.limit:
            return (
                f"refused: the {b.label(self.key)} is less than this job alone could cost "
                f"(${self.could_cost:.4f}): lower its max_runtime (or give it a max_cost with "
                "on_max_cost: cap), or raise the limit"
            )
        could = "an unknown amount" if self.could_cost is None else f"${self.could_cost:.4f}"
        said = (
            f"{b.label(self.key)}: ${self.spent:.4f} spent this {b.period}, and this job could "
            f"cost {could}"
        )
        if b.on_exceed == "refuse":
            return f"refused: {said}; raise the limit, or submit it next {b.period}"
        return (
            f"waiting on the {said}; it starts when the budget has room (next {b.period} at latest)"
        )


class BudgetGate(ServiceSteps):
    """Mixed into ``Service``: ``admit`` at submit, ``budget_hold`` before compute is rented."""

    budgets: tuple[Budget, ...]

    @functools.cached_property
    def prices(self) -> PriceTable:
        return PriceTable.load(self.settings.price_table)

    def admit(
        self, spec: JobSpec, backend: str, *, owner: str, source: str, parent: str
    ) -> tuple[JobSpec, CostLimit | None]:
        """``spec`` within its max_cost (capped or as is), checked against refusing budgets;
        SpecError or OverBudget, with the numbers, before anything is stored or rented."""
        price = price_of(spec, backend, self.settings, self.prices)
        spec, limit = fit(spec, price, self.settings.setup_allowance_s)
        over = self._over(spec, price, self._facts(owner, source, parent))
        if over is not None and over.refused:
            raise OverBudget(over.reason())
        return spec, limit

    def budget_hold(self, job_id: str) -> JobRecord | None:
        """The job held back by a budget with no room for it now (waiting, or failed under a
        refusing budget); None when no budget stops it."""
        if not self.budgets:
            return None
        job = self.store.get(job_id)
        if job.state not in (JobState.ACCEPTED, JobState.WAITING_FOR_CAPACITY) or job.makes_jobs:
            return None
        price = price_of(job.spec, job.backend, self.settings, self.prices)
        over = self._over(job.spec, price, self._facts(job.owner, job.source, job.parent))
        if over is None:
            return None
        if over.refused:
            return self._transition(job_id, transitions.not_launched(over.reason()))[0]
        now = utcnow()
        again = min(now + RECHECK, period_end(over.budget.period, now))
        return self._transition(job_id, transitions.held_by_budget(over.reason(), again))[0]

    def sweep_budget_spent(self, sweep: JobRecord) -> str:
        """Why the sweep may launch no more trials (a budget of it has no room for one more
        trial's worst case), or ""."""
        facts = Facts("", sweep.owner, sweep.id, _sweep_name(sweep))
        price = price_of(sweep.spec, sweep.backend, self.settings, self.prices)
        could = worst_cost(sweep.spec, price, self.settings.setup_allowance_s) or 0.0
        for budget in self.budgets:
            key = budget.key_of(facts) if budget.scope == "sweep" else None
            if key is None:
                continue
            spent = self.spent(budget, key)
            if spent >= budget.limit or spent + could > budget.limit:
                return (
                    f"stopped launching trials: the {budget.label(key)} is spent "
                    f"(${spent:.4f} this {budget.period}; a trial could cost ${could:.4f})"
                )
        return ""

    def spent(
        self,
        budget: Budget,
        key: str,
        now: datetime | None = None,
        records: list[JobRecord] | None = None,
    ) -> float:
        """USD the jobs under ``budget``'s ``key`` cost so far this period, from their records
        (``records``: the store's, read once by a caller checking several budgets)."""
        now = now or utcnow()
        start = period_start(budget.period, now)
        records = self.store.list() if records is None else records
        names = {r.id: _sweep_name(r) for r in records if r.sweep is not None}
        recent = [r for r in records if _held_since(r, start)]
        return sum(
            b.cost(start, now)
            for b in bills_of(recent, now)
            if budget.key_of(_facts_of(b, names)) == key
        )

    def _over(self, spec: JobSpec, price: Price, facts: Facts) -> Over | None:
        if not self.budgets:
            return None
        could = worst_cost(spec, price, self.settings.setup_allowance_s)
        records: list[JobRecord] | None = None
        for budget in self.budgets:
            key = budget.key_of(facts)
            if key is None:
                continue
            records = self.store.list() if records is None else records
            spent = self.spent(budget, key, records=records)
            if spent >= budget.limit or spent + (could or 0.0) > budget.limit:
                return Over(budget, key, spent, could)
        return None

    def _facts(self, owner: str, source: str, parent: str) -> Facts:
        sweep, name = "", ""
        if parent:
            try:
                record = self.store.get(parent)
            except NotFound:
                record = None
            if record is not None and record.sweep is not None:
                sweep, name = record.id, _sweep_name(record)
        return Facts(rule_from(owner, source), owner, sweep, name)


def _facts_of(bill: JobBill, sweep_names: dict[str, str]) -> Facts:
    return Facts(bill.rule, bill.owner, bill.sweep, sweep_names.get(bill.sweep, ""))


def _held_since(job: JobRecord, start: datetime) -> bool:
    """Whether ``job`` may have held compute since ``start`` (its bill is worth reading)."""
    if job.released_at is None or job.created_at >= start:
        return True
    return job.released_at + timedelta(seconds=job.billed_tail_s) > start


def _sweep_name(sweep: JobRecord) -> str:
    return str((sweep.sweep or {}).get("spec", {}).get("name") or "")


class _BudgetsOnly(BaseModel):
    model_config = ConfigDict(frozen=True)  # the rest of the file is the rules' to check

    budgets: list[Budget] = Field(default_factory=list)


def load_budgets(path: Path) -> tuple[Budget, ...]:
    """The ``budgets:`` of the rules file at ``path`` (none when there is no such file);
    RuleError naming the field when one is wrong, so no service runs on a budget it misread."""
    if not path.is_file():
        return ()
    source = str(path)
    try:
        data = parse_document(path.read_text(encoding="utf-8"), source)
    except (SpecError, OSError, UnicodeDecodeError) as exc:
        raise RuleError(f"cannot read the budgets in rules file '{path}': {exc}") from exc
    if not isinstance(data, dict):
        return ()  # the rules' own load says what is wrong with it
    try:
        return tuple(_BudgetsOnly.model_validate({"budgets": data.get("budgets") or []}).budgets)
    except ValidationError as exc:
        raise RuleError(explain(exc, source)) from exc

"""Optuna, with its study kept in the sweep's own record: sampling (ask), results (tell), and
the median pruner, from any process.

The study's storage is Optuna's ``JournalStorage`` over ``RecordJournal``: its log is a list in
the sweep's record, appended by compare-and-swap, so a function instance, the reaper or the local
agent that opens the sweep replays the same study, and nothing has to stay alive between two
events. Each ask gets a sampler seeded by the sweep and the trial's number, so the search is the
same whichever process asks. Imported only where trials are sampled or told (Optuna takes a
while to import); reading a sweep never needs it.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial, TrialState

from ephemerid.errors import Conflict
from ephemerid.store import JobStore
from ephemerid.sweeps.spec import Dimension, Goal, Method, Search

STUDY = "sweep"
ABANDONED = "ephemerid_abandoned"  # a trial cut short while it was sampled: never run
optuna.logging.set_verbosity(optuna.logging.WARNING)
log = logging.getLogger("ephemerid.sweeps")


class RecordJournal(BaseJournalBackend):
    """Optuna's journal in ``record.sweep["journal"]``; each append is one compare-and-swap."""

    def __init__(self, store: JobStore, sweep_id: str) -> None:
        self.store = store
        self.sweep_id = sweep_id

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        sweep = self.store.get(self.sweep_id).sweep or {}
        return list(sweep.get("journal", [])[log_number_from:])

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        for _ in range(100):
            record = self.store.get(self.sweep_id)
            state = dict(record.sweep or {})
            state["journal"] = [*state.get("journal", []), *logs]
            try:
                self.store.update(record.evolve(sweep=state))
                return
            except Conflict:
                continue
        raise Conflict(f"sweep {self.sweep_id} kept changing under 100 attempts to log its search")


def distribution(dim: Dimension) -> BaseDistribution:
    if dim.kind == "choice":
        return CategoricalDistribution(dim.choices)
    if dim.kind == "int":
        return IntDistribution(int(dim.low), int(dim.high), step=int(dim.step or 1))
    return FloatDistribution(dim.low, dim.high, log=dim.kind == "loguniform", step=dim.step)


@dataclass
class Pruned:
    step: int
    value: float
    median: float
    trials: int

    def reason(self, metric: str) -> str:
        return (
            f"pruned at step {self.step}: {metric} {self.value:.4g} behind median "
            f"{self.median:.4g} of {self.trials} finished trials at that step"
        )


class SweepSearch:
    """The sweep's Optuna study, opened over its record."""

    def __init__(self, store: JobStore, sweep_id: str, search: Search) -> None:
        self.search = search
        self.sweep_id = sweep_id
        journal = RecordJournal(store, sweep_id)
        made = bool(list(journal.read_logs(0)))
        self.storage = JournalStorage(journal)
        direction: Literal["minimize", "maximize"] = (
            "maximize" if search.goal is Goal.MAXIMIZE else "minimize"
        )
        if made:  # loaded, never created again: a create is a line in the journal, each time
            self.study = optuna.load_study(storage=self.storage, study_name=STUDY)
        else:  # the first step (under the sweep's lease: one process makes it)
            self.study = optuna.create_study(
                storage=self.storage, study_name=STUDY, direction=direction, load_if_exists=True
            )
        self.study_id = self.storage.get_study_id_from_name(STUDY)
        self.distributions = {n: distribution(d) for n, d in search.dimensions.items()}
        if search.early_stop is not None:
            self.pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(
                n_startup_trials=search.early_stop.startup_trials,
                n_warmup_steps=search.early_stop.warmup_steps,
            )
        else:
            self.pruner = optuna.pruners.NopPruner()

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def counted(self) -> list[FrozenTrial]:
        """Trials that count towards max_trials: all but those abandoned while sampled."""
        return [t for t in self.trials() if ABANDONED not in t.user_attrs]

    def exhausted(self) -> bool:
        return len(self.counted()) >= self.search.trials

    def ask(self) -> FrozenTrial:
        """Sample the next trial (its params are in the journal before it is run)."""
        number = len(self.trials())
        self.study.sampler = self._sampler(number)
        trial = self.study.ask(fixed_distributions=self.distributions)
        return self._frozen(trial.number)

    def _sampler(self, number: int) -> optuna.samplers.BaseSampler:
        base = f"{self.sweep_id}:{self.search.seed}"
        seed = int(hashlib.sha256(f"{base}:{number}".encode()).hexdigest()[:8], 16)
        if self.search.method is Method.GRID:
            grid = {n: list(d.grid or ()) for n, d in self.search.dimensions.items()}
            stable = int(hashlib.sha256(base.encode()).hexdigest()[:8], 16)
            return optuna.samplers.GridSampler(grid, seed=stable)
        if self.search.method is Method.BAYES:
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def complete(self, trial: FrozenTrial) -> bool:
        """Whether ``trial`` was sampled in full (a crash can cut an ask short)."""
        return set(trial.params) == set(self.distributions)

    def abandon(self, number: int) -> None:
        """A trial cut short while it was sampled: failed, and not counted, so it is asked anew."""
        trial_id = self._trial_id(number)
        self.storage.set_trial_user_attr(trial_id, ABANDONED, True)
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def tell(self, number: int, state: TrialState, value: float | None = None) -> None:
        if state is TrialState.COMPLETE:
            self.study.tell(number, 0.0 if value is None else value, skip_if_finished=True)
        else:
            self.study.tell(number, state=state, skip_if_finished=True)

    def record(self, number: int, values: list[tuple[int | None, float]]) -> int:
        """Record a running trial's intermediate values not recorded yet; its trial id."""
        trial_id = self._trial_id(number)
        known = self.storage.get_trial(trial_id).intermediate_values
        for index, (step, value) in enumerate(values):
            step = index if step is None else step
            if step not in known:
                self.storage.set_trial_intermediate_value(trial_id, step, value)
                known = {**known, step: value}
        return trial_id

    def report(self, number: int, values: list[tuple[int | None, float]]) -> Pruned | None:
        """Record a running trial's new intermediate values; what prunes it, if it should stop."""
        frozen = self.storage.get_trial(self.record(number, values))
        if frozen.last_step is None or not self.pruner.prune(self.study, frozen):
            return None
        return self._why(frozen)

    def _why(self, frozen: FrozenTrial) -> Pruned:
        step = frozen.last_step
        assert step is not None
        values = frozen.intermediate_values.values()
        best = max(values) if self.search.goal is Goal.MAXIMIZE else min(values)
        finished = [
            t.intermediate_values[step]
            for t in self.trials()
            if t.state is TrialState.COMPLETE and step in t.intermediate_values
        ]
        median = statistics.median(finished) if finished else float("nan")
        return Pruned(step=step, value=best, median=median, trials=len(finished))

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _frozen(self, number: int) -> FrozenTrial:
        return self.storage.get_trial(self._trial_id(number))

"""The sweep controller: event-driven, with all of its state in the job store.

``advance_sweep`` is one step, and every event calls it: the sweep's submit (the first fan-out),
a trial's result or end (``Service.complete`` / ``Service.end``), new metrics of a running trial
(the local agent), and every reaper pass (which finds what an event missed). A step tells Optuna
how each ended trial did, prunes a losing trial through the normal teardown, cancels the trials
of a sweep that ended, samples and submits trials until ``max_parallel`` are active, and ends
the sweep once every trial has ended. No loop has to stay alive between two events.

One process steps a sweep at a time: a step takes the record's lease (a compare-and-swap); an
event that finds it held counts a poke, and the holder steps again before letting go. A lease
whose holder died runs out after ``LEASE_S``. Each trial's idempotency key is derived from the
sweep's and the trial's number, and a trial's params are in the journal before its job is
submitted, so a fan-out cut short by a crash and run again makes no second trial.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ephemerid import transitions
from ephemerid.errors import EphemeridError, SpecError, Unavailable
from ephemerid.parents import Parents
from ephemerid.record import JobRecord, JobState, Submitted, job_id_for, utcnow
from ephemerid.spec import JobSpec
from ephemerid.sweeps import state
from ephemerid.sweeps.lease import release_lease, renew_lease, take_lease
from ephemerid.sweeps.spec import SweepSpec

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from ephemerid.sweeps.search import SweepSearch

MAX_STEPS = 20  # steps one advance takes for pokes that came meanwhile; the reaper does the rest
log = logging.getLogger("ephemerid.sweeps")


class Sweeps(Parents):
    """Mixed into ``Service``, whose steps it uses."""

    # -- submit ------------------------------------------------------------------------------

    def submit_sweep(
        self,
        spec: SweepSpec,
        *,
        key: str | None = None,
        source: str = "api",
        namespace: str | None = None,
        owner: str = "",
        admin: bool = False,
        python: str = "",
    ) -> Submitted:
        """Accept a sweep once per key, and fan out its first trials.

        Everything a trial needs is checked first (the search's size, the trial template's
        backend, code and inputs), so a bad sweep is refused with nothing stored or rented.
        """
        most = self.settings.sweep_max_trials
        if spec.search.trials > most:
            raise SpecError(
                f"search.max_trials: the sweep would run {spec.search.trials} trials; this "
                f"ephemerid runs at most {most} (EPHEMERID_SWEEP_MAX_TRIALS): lower it"
            )
        if spec.trial.secret_params:
            raise SpecError(
                "a sweep's trial takes no secret_params: a sweep keeps its template to submit "
                "trials later, and never stores a secret; pass secrets through the job's "
                "environment instead"
            )

        def build(sweep_id: str, key: str) -> JobRecord:
            backend = self._checked_backend(spec.trial)
            self._check_staging(spec.trial, owner, admin)
            self.admit(spec.trial, backend, owner=owner, source=source, parent="")  # max_cost
            return JobRecord(
                id=sweep_id,
                key=key,
                spec=spec.trial.without_secrets(),
                source=source,
                owner=owner,
                backend=backend,
                python=python,
                sweep=state.initial(spec),
            )

        keys = (spec.idempotency_key, key, namespace)
        return self._accept_parent("sweep", keys, build, self.advance_sweep)

    def prunes(self, sweep_id: str) -> bool:
        """Whether the sweep stops losing trials early: only then are metrics an event for it."""
        sweep = self.store.get(sweep_id).sweep or {}
        return bool(sweep.get("spec", {}).get("search", {}).get("early_stop"))

    # -- one step, under the lease -----------------------------------------------------------

    def advance_sweep(self, sweep_id: str) -> JobRecord:
        """Move the sweep on as far as it goes now; its record after."""
        for _ in range(MAX_STEPS):
            lease = take_lease(self._transition, sweep_id)
            if lease is None:  # another process steps it, and steps again for this event
                break
            pokes = (self.store.get(sweep_id).sweep or {}).get("pokes", 0)
            try:
                self._step(sweep_id, lease)
            finally:
                poked = release_lease(self._transition, sweep_id, lease, pokes)
            if not poked:
                break
        return self.store.get(sweep_id)

    def _step(self, sweep_id: str, lease: str) -> None:
        from ephemerid.sweeps.search import SweepSearch  # Optuna: only where trials are made

        sweep = self.store.get(sweep_id)
        spec = state.sweep_spec(sweep)
        search = SweepSearch(self.store, sweep_id, spec.search)
        self._reconcile(sweep, spec, search)
        sweep = self.store.get(sweep_id)
        if not sweep.state.terminal:
            self._fan_out(sweep, spec, search, lease)
        self._summarize(sweep_id, spec, search)
        ended = self.store.get(sweep_id)
        if ended.state.terminal and any(t["state"] == state.ACTIVE for t in state.trials(ended)):
            self._reconcile(ended, spec, search)  # it ended in this step: end its trials too
            self._summarize(sweep_id, spec, search)

    # -- trials ------------------------------------------------------------------------------

    def _reconcile(self, sweep: JobRecord, spec: SweepSpec, search: SweepSearch) -> None:
        """Tell the search how each trial did; prune a losing one; end those of an ended sweep."""
        from optuna.trial import TrialState

        for trial in search.trials():
            if trial.state is not TrialState.RUNNING:
                continue
            if not search.complete(trial):
                search.abandon(trial.number)  # cut short while sampled: asked anew
                continue
            job = self._trial_job(sweep, trial.number)
            if job is None:
                if sweep.state.terminal:
                    search.tell(trial.number, TrialState.FAIL)
                    continue
                job = self._submit_trial(sweep, spec, search, trial)
                if job is None:
                    continue
            if sweep.state.terminal and not job.state.terminal:
                job = self.end(job.id, JobState.CANCELLED, f"its sweep {sweep.id} ended")
            if job.state.terminal:
                self._told(sweep, spec, search, trial, job)
            elif spec.search.early_stop is not None and job.state is JobState.RUNNING:
                self._maybe_prune(spec, search, trial, job)

    def _told(
        self,
        sweep: JobRecord,
        spec: SweepSpec,
        search: SweepSearch,
        trial: FrozenTrial,
        job: JobRecord,
    ) -> None:
        from optuna.trial import TrialState

        metric = spec.search.metric
        if job.state is JobState.PRUNED:
            search.tell(trial.number, TrialState.PRUNED)
        elif job.state is not JobState.SUCCEEDED:
            search.tell(trial.number, TrialState.FAIL)
        elif metric is not None and metric not in job.metrics:
            search.tell(trial.number, TrialState.FAIL)
            logged = ", ".join(sorted(job.metrics)) or "none"
            self._end_sweep(
                sweep.id,
                JobState.FAILED,
                f"trial {trial.number} ({job.id}) ended without logging {metric}, the sweep's "
                f"metric (it logged {logged}): log it with track.log_metric('{metric}', value), "
                "or set search.metric to one it logs",
            )
        else:
            if spec.search.early_stop is not None and metric is not None:
                # the steps a trial that ended between two looks logged: what later ones meet
                search.record(trial.number, self.metric_history(job.id).get(metric, []))
            search.tell(trial.number, TrialState.COMPLETE, job.metrics.get(metric or "", 0.0))

    def _maybe_prune(
        self, spec: SweepSpec, search: SweepSearch, trial: FrozenTrial, job: JobRecord
    ) -> None:
        metric = spec.search.metric or ""
        values = self.metric_history(job.id).get(metric, [])
        if not values:
            return
        pruned = search.report(trial.number, values)
        if pruned is not None:
            self.end(job.id, JobState.PRUNED, pruned.reason(metric))

    def _submit_trial(
        self, sweep: JobRecord, spec: SweepSpec, search: SweepSearch, trial: FrozenTrial
    ) -> JobRecord | None:
        from optuna.trial import TrialState

        data = spec.trial.model_dump(mode="json", exclude_none=True)
        data["params"] = {**data.get("params", {}), **trial.params}
        data["name"] = state.trial_name(sweep, trial.number)
        try:
            submitted = self.submit(
                JobSpec.model_validate(data),
                key=state.trial_key(sweep, trial.number),
                source=f"sweep:{sweep.id}",
                owner=sweep.owner,
                admin=True,  # the sweep's submit checked the template with its caller's rights
                python=sweep.python or None,
                parent=sweep.id,
            )
        except Unavailable:
            raise  # transient: the trial stays sampled, and the next step submits it
        except (EphemeridError, ValueError) as exc:  # e.g. sampled params the spec refuses
            log.warning("sweep %s: trial %d not submitted: %s", sweep.id, trial.number, exc)
            search.tell(trial.number, TrialState.FAIL)
            return None
        return submitted.job

    def _trial_job(self, sweep: JobRecord, number: int) -> JobRecord | None:
        key = state.trial_key(sweep, number)
        return self._known(job_id_for("train", key), key)

    def _fan_out(self, sweep: JobRecord, spec: SweepSpec, search: SweepSearch, lease: str) -> None:
        from optuna.trial import TrialState

        if sweep.state is JobState.ACCEPTED:
            self._transition(sweep.id, transitions.parent_started)
        while not search.exhausted():
            active = [t for t in search.trials() if t.state is TrialState.RUNNING]
            if len(active) >= spec.search.max_parallel:
                return
            if not renew_lease(self._transition, sweep.id, lease):  # another process steps it now
                return
            if self.budgets and self.sweep_budget_spent(sweep):  # _summarize says so
                return
            trial = search.ask()
            job = self._submit_trial(sweep, spec, search, trial)
            if job is not None and job.state.terminal:  # failed at once (e.g. its staging)
                self._told(sweep, spec, search, trial, job)

    # -- the summary and the end -------------------------------------------------------------

    def _summarize(self, sweep_id: str, spec: SweepSpec, search: SweepSearch) -> None:
        from optuna.trial import TrialState

        sweep = self.store.get(sweep_id)
        rows: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        for trial in search.counted():
            job = self._trial_job(sweep, trial.number)
            value = trial.value if trial.state is TrialState.COMPLETE else None
            row = {
                "number": trial.number,
                "job": job.id if job else "",
                "state": state.ACTIVE if job is None or not job.state.terminal else job.state.value,
                "params": dict(trial.params),
                "value": value if spec.search.metric else None,
                "reason": job.reason if job and job.state.terminal else "",
                "cost_usd": job.cost_usd if job else None,
            }
            rows.append(row)
            if spec.search.metric and value is not None and job is not None:
                better = spec.search.goal.value == "maximize"
                if best is None or (value > best["value"] if better else value < best["value"]):
                    best = {k: row[k] for k in ("number", "job", "params", "value")}
        stopped = self.sweep_budget_spent(sweep) if self.budgets else ""  # no more trials
        done = search.exhausted() or bool(stopped)
        finished = done and all(r["state"] != state.ACTIVE for r in rows)

        def summary(job: JobRecord) -> dict[str, Any] | None:
            state = job.sweep or {}
            metrics = {spec.search.metric: best["value"]} if best and spec.search.metric else {}
            said = not stopped or job.reason == stopped or job.state.terminal
            if state.get("trials") == rows and state.get("best") == best and said:
                return None  # nothing new: no write
            values: dict[str, Any] = {"sweep": {**state, "trials": rows, "best": best}}
            if not said:
                values["reason"] = stopped
            if metrics:
                values["metrics"] = metrics
            return values

        self._transition(sweep_id, summary)
        if finished and not sweep.state.terminal:
            self._finish(sweep_id, spec, rows, best, stopped)

    def _finish(
        self,
        sweep_id: str,
        spec: SweepSpec,
        rows: list[dict[str, Any]],
        best: dict[str, Any] | None,
        stopped: str = "",
    ) -> None:
        ok = [r for r in rows if r["state"] in (JobState.SUCCEEDED.value, JobState.PRUNED.value)]
        if not ok:
            reason = f"every one of its {len(rows)} trials failed"
            self._end_sweep(
                sweep_id, JobState.FAILED, f"{stopped}; {reason}" if stopped else reason
            )
            return
        reason = f"{len(rows)} trials" + (f" ({stopped})" if stopped else "")
        if best is not None:
            metric = f"{spec.search.metric}={best['value']:.6g}"
            reason += f"; best: trial {best['number']} ({best['job']}) {metric}"
        if spec.register_best is not None and best is not None:
            reason += "; " + self._register_best(sweep_id, spec, best)
        self._end_sweep(sweep_id, JobState.SUCCEEDED, reason)

    def _register_best(self, sweep_id: str, spec: SweepSpec, best: dict[str, Any]) -> str:
        from ephemerid import names

        target = spec.register_best
        assert target is not None
        job = self.store.get(best["job"])
        model_dir = f"{names.run_key(job.id, names.OUTPUTS_DIR)}/model"
        if not any(key.startswith(model_dir + "/") for key in job.outputs):
            return f"nothing registered: the best trial wrote no model/ output (under {model_dir})"
        version = self.models.register(target.name, model_dir, job_id=job.id, metrics=job.metrics)
        if target.alias:
            self.models.promote(version.name, version.version, target.alias)
        self._transition(sweep_id, lambda _: {"model_version": version.ref})
        alias = f" as {target.name}@{target.alias}" if target.alias else ""
        return f"registered {version.ref}{alias}"

    def _end_sweep(self, sweep_id: str, end: JobState, reason: str) -> None:
        def change(job: JobRecord) -> dict[str, Any] | None:
            if job.state.terminal:
                return None
            return {"state": end, "reason": reason, "finished_at": utcnow()}

        self._transition(sweep_id, change)

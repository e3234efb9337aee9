"""The one path every trigger takes: submit, start, complete, cancel, release; and the reads.

Adapters (blob events, queue messages, cron, HTTP, the CLI) only turn an event into a JobSpec
and call ``submit``. Every change to a job is one of the pure changes in ``transitions``,
applied by a compare-and-swap in ``_transition``, so two instances handling the same event
cannot both provision, and a lost race re-reads and retries. Callers read through the service
(``get``, ``list``, ``read_log``, ``rejections`` ...), never through its store or bucket.
"""

from __future__ import annotations

import builtins
import logging
import os
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta

from ephemerid import names, sandbox, transitions
from ephemerid.artifacts import ArtifactStore, get_bytes
from ephemerid.batch.fanout import Fanout, shard_count
from ephemerid.budgets import Budget, BudgetGate
from ephemerid.compute import ComputeBackend, ComputeStatus, Handle, check_backend
from ephemerid.contract import Result, RunStatus
from ephemerid.errors import (
    BadInput,
    CapacityUnavailable,
    ComputeError,
    Conflict,
    ContractError,
    EphemeridError,
    NotFound,
    SpecError,
    Unavailable,
)
from ephemerid.mlflow_run import SettledRuns
from ephemerid.models import ModelRegistry
from ephemerid.reads import Reads
from ephemerid.record import (
    ComputeState,
    JobRecord,
    JobState,
    Submitted,
    idempotency_key,
    job_id_for,
    utcnow,
)
from ephemerid.recovery import Recovery
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.staging import Plan, Staging
from ephemerid.store import JobStore
from ephemerid.sweeps.controller import Sweeps
from ephemerid.sweeps.spec import SweepSpec
from ephemerid.transitions import Change

log = logging.getLogger("ephemerid")
# a submit younger than this is still being made by its first delivery (the reaper's own wait
# for an accepted job that never started is longer: reaper.ACCEPTED_STALE)
SUBMIT_IN_FLIGHT = timedelta(seconds=10)
Listener = Callable[[JobRecord], None]


class Service(Reads, Recovery, Sweeps, Fanout, BudgetGate):
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        backends: Mapping[str, ComputeBackend],
        settings: Settings,
        notify: Listener | None = None,
        budgets: tuple[Budget, ...] = (),  # the rules file's (ephemerid.budgets)
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.backends = backends
        self.settings, self.budgets = settings, budgets
        self.models = ModelRegistry(artifacts)
        self.staging = Staging(artifacts, self.models, settings)
        # every reason is stored masked: an error message may quote a connection string
        mlflow_uri = settings.mlflow_tracking_uri.get_secret_value()  # it may hold credentials
        self.mask = sandbox.Mask.of_env({**os.environ, **settings.storage.as_env()})
        self.mask = self.mask.with_secrets(sandbox.uri_secrets(mlflow_uri))
        self.mlflow_runs = SettledRuns(mlflow_uri, artifacts, self.mask)
        self._listeners: list[Listener] = [notify] if notify else []

    def close(self) -> None:
        """Close the store and every backend's connections."""
        self.store.close()
        for backend in self.backends.values():
            backend.close()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every job record this service creates or changes.

        Returns the call that unsubscribes it. A listener that raises is logged, never fatal.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self, job: JobRecord) -> None:
        for listener in list(self._listeners):
            try:
                listener(job)
            except Exception:
                log.exception("a job listener failed on %s", job.id)

    # -- submit ------------------------------------------------------------------------------

    def submit(
        self,
        spec: JobSpec | SweepSpec,
        *,
        key: str | None = None,
        source: str = "api",
        namespace: str | None = None,
        owner: str = "",
        admin: bool = False,
        python: str | None = None,
        parent: str = "",
    ) -> Submitted:
        """Accept ``spec`` once per idempotency key; refuse bad input before renting anything.

        ``key`` is the caller's own (trusted); the spec's ``idempotency_key``, written by a
        sender, wins over it, inside ``namespace`` when one is given (``queue``, ``http``...),
        so a sender cannot claim another source's key. A redelivery (a key already taken) is
        answered from the store before anything else is checked: it costs one read. A spec
        that the backend cannot run, or whose code, inputs or model are not there, is refused
        (SpecError) with nothing stored. ``owner`` is kept on the record; a job takes another
        job's outputs as an input only if that job has the same owner, or ``admin``. A sweep
        (``SweepSpec``) is accepted the same way, and fans out its trials (``Sweeps``); a trial
        names its sweep in ``parent``.
        """
        if isinstance(spec, SweepSpec) or shard_count(spec) > 1:
            where = {"key": key, "source": source, "namespace": namespace, "owner": owner}
            fan_out = self.submit_sweep if isinstance(spec, SweepSpec) else self.submit_fanout
            return fan_out(spec, **where, admin=admin, python=python or sys.executable)  # type: ignore[arg-type]
        key = idempotency_key(spec.idempotency_key, key, namespace)
        job_id = job_id_for(spec.kind.value, key)
        known = self._known(job_id, key)
        if known is not None:
            return Submitted(self._redelivered(known, source), created=False)
        backend = self._checked_backend(spec)
        spec, limit = self.admit(spec, backend, owner=owner, source=source, parent=parent)
        plan = self._check_staging(spec, owner, admin)
        record = JobRecord(
            id=job_id,
            key=key,
            spec=spec.without_secrets(),
            source=source,
            owner=owner,
            backend=backend,
            python=python or sys.executable,
            model_version=plan.model.ref if plan.model else "",
            environment=plan.environment.id if plan.environment else "",
            parent=parent,
            cost_limit=limit.to_json() if limit else None,
        )
        job, created = self.store.create_if_absent(record)
        if not created:
            return Submitted(self._redelivered(job, source), created=False)
        self._notify(job)
        try:
            self.staging.write_launch(job, plan, spec)
        except Unavailable:
            raise  # transient: the record stays ACCEPTED, and a redelivery finishes the submit
        except (EphemeridError, OSError) as exc:
            failed = self._fail(job.id, f"could not stage the job: {exc}")
            return Submitted(failed, created=True)
        return Submitted(self._provision(job.id), created=True)

    def _redelivered(self, job: JobRecord, source: str) -> JobRecord:
        """A job already accepted: nothing to do, unless a crash cut its submit short.

        A redelivery racing the first delivery (accepted moments ago, its launch being written
        now) leaves the job to it: only one older than ``SUBMIT_IN_FLIGHT`` is finished here.
        """
        recent = utcnow() - job.created_at < SUBMIT_IN_FLIGHT
        if job.state is JobState.ACCEPTED and not recent and not self.staging.has_launch(job.id):
            log.warning("job %s was accepted but not launched: finishing its submit", job.id)
            return self.start(job.id)
        log.info("duplicate delivery for job %s (%s): nothing to do", job.id, source)
        return job

    def _check_staging(self, spec: JobSpec, owner: str, admin: bool) -> Plan:
        """What staging ``spec`` takes (SpecError when its code, inputs or model are not there)."""
        return self.staging.check(spec, None if admin else self._owned_by(owner))

    def _owned_by(self, owner: str) -> Callable[[str], bool]:
        def owns(job_id: str) -> bool:
            try:
                return self.store.get(job_id).owner == owner
            except NotFound:
                return False

        return owns

    def _known(self, job_id: str, key: str) -> JobRecord | None:
        try:
            job = self.store.get(job_id)
        except NotFound:
            return None
        if job.key != key:  # a hash collision: never merged (create_if_absent refuses it)
            return None
        return job

    def _checked_backend(self, spec: JobSpec) -> str:
        name = check_backend(spec.compute.backend or self.settings.backend)
        if name not in self.backends:
            raise SpecError(f"compute.backend '{name}' is not configured on this ephemerid")
        self.backends[name].check(spec)
        return name

    # -- compute -----------------------------------------------------------------------------

    def start(self, job_id: str) -> JobRecord:
        """Provision compute for an accepted or waiting job; exactly one caller wins.

        Compute is rented only for a job whose launch is there: one a crash left without it gets
        it written now, and a job whose launch cannot be written fails with nothing rented.
        """
        job = self.store.get(job_id)
        if job.makes_jobs:  # a sweep or a fanned-out batch job rents nothing: its children do
            return self.advance_parent(job_id)
        if job.state not in (JobState.ACCEPTED, JobState.WAITING_FOR_CAPACITY):
            return job
        if job.backend not in self.backends:
            raise ComputeError(
                f"job {job_id} runs on compute backend '{job.backend}', which is not configured "
                "here: configure it again, or cancel the job"
            )
        try:
            self.staging.ensure_launch(job)
        except Unavailable:
            raise  # transient: the next delivery or reaper pass tries again
        except (EphemeridError, OSError) as exc:
            reason = f"could not stage the job: {exc}"
            return self._transition(job_id, transitions.not_launched(reason))[0]
        return self._provision(job_id)

    def _provision(self, job_id: str) -> JobRecord:
        if (held := self.budget_hold(job_id)) is not None:  # no budget room: it waits
            return held
        job, won = self._transition(job_id, transitions.to_provisioning)
        if not won:
            return job
        backend = self.backends[job.backend]
        try:
            handle = backend.provision(job)
        except CapacityUnavailable as exc:
            return self._transition(job_id, transitions.waiting(str(exc), exc.retry_after_s))[0]
        except Exception as exc:  # anything else: fail the job, and still owe a teardown
            log.exception("provisioning job %s failed", job_id)
            return self.release(self._fail(job_id, f"provisioning failed: {exc}"))
        job, _ = self._transition(job_id, transitions.live(handle))
        return self.release(job) if job.state.terminal else job

    def release(self, job: JobRecord) -> JobRecord:
        """Tear the job's compute down; record ``released`` only once that is confirmed."""
        if job.compute_state in (ComputeState.NONE, ComputeState.RELEASED):
            return job
        change = transitions.released if self._teardown(job) else transitions.teardown_owed
        job, changed = self._transition(job.id, change)
        if changed and job.settled:  # once, best effort: the job's MLflow run gets its cost
            self.mlflow_runs.settled(job)
        return job

    def _teardown(self, job: JobRecord) -> bool:
        try:
            return self.backends[job.backend].teardown(Handle(job.backend, job.id, job.handle))
        except EphemeridError as exc:
            log.warning("teardown of job %s not confirmed yet: %s", job.id, exc)
            return False

    def dispatch_waiting(self) -> builtins.list[JobRecord]:
        """Try to place waiting jobs, oldest first, until one still finds no capacity.

        A job whose backend asked for a pause (``next_try_at``) is left until then.
        """
        started = []
        now = utcnow()
        for job in reversed(self.store.list([JobState.WAITING_FOR_CAPACITY])):
            if job.next_try_at and job.next_try_at > now:
                continue
            try:
                job = self.start(job.id)
            except Exception as exc:  # one job that cannot start now keeps no other waiting
                log.warning("waiting job %s not started this pass: %s", job.id, exc)
                continue
            started.append(job)
            if job.state is JobState.WAITING_FOR_CAPACITY:
                break
        return started

    def adopt(self, job: JobRecord) -> JobRecord:
        """A provisioning job whose provision outlived its caller (killed mid-PUT): if its backend
        holds live compute for it after all, record that handle and run on (RUNNING) instead of
        throwing the work away. The job unchanged when there is none."""
        backend = self.backends[job.backend]
        owned = [h for h in backend.list_owned() if h.job_id == job.id]
        held = (ComputeStatus.STARTING, ComputeStatus.RUNNING)
        found = next((h for h in owned if backend.poll(h) in held), None)
        return job if found is None else self._transition(job.id, transitions.adopted(found))[0]

    # -- completion and cancel ---------------------------------------------------------------

    def complete(self, job_id: str) -> JobRecord:
        """Handle runs/<job>/result.json: record the end, release compute, register the model.

        A result that cannot be read (malformed, another contract version) fails the job with the
        reason, naming the file, rather than failing every redelivery and reaper pass after it.
        """
        key = names.run_key(job_id, names.RESULT_FILE)
        try:
            result = Result.loads(get_bytes(self.artifacts, key), where=key)
        except ContractError as exc:
            result = Result(job_id=job_id, status=RunStatus.FAILED, reason=str(exc))
        if result.status is RunStatus.EVICTED:
            job = self.store.get(job_id)
            if not job.state.terminal:
                return self._evicted(job)
        try:
            job, _ = self._transition(job_id, transitions.finished(result))
        except BadInput as exc:  # the store refuses the record it would make (too large)
            job = self._fail(job_id, f"its result could not be recorded: {exc}")
        job = self.release(job)
        job = self.register_model(job)
        self.dispatch_waiting()
        return self._tell_parent(job)

    def register_model(self, job: JobRecord) -> JobRecord:
        """Register a succeeded train job's ``model/`` output (at most once per job)."""
        target = job.spec.register_as
        if not job.model_owed or target is None:
            return job
        model_dir = f"{names.run_key(job.id, names.OUTPUTS_DIR)}/model"
        version = self.models.register(target.name, model_dir, job_id=job.id, metrics=job.metrics)
        if target.alias:
            self.models.promote(version.name, version.version, target.alias)
        return self._transition(job.id, transitions.model_registered(version.ref))[0]

    def cancel(self, job_id: str, reason: str = "cancelled by user") -> JobRecord:
        return self.end(job_id, JobState.CANCELLED, reason)

    def end(self, job_id: str, state: JobState, reason: str) -> JobRecord:
        """Move an unfinished job to terminal ``state`` and give its compute back.

        The teardown never waits on the store: when the write fails (a full disk, an outage),
        the compute is torn down first, which may free what the write needed, then the write
        is tried once more; if that fails too, Unavailable says the compute is given back.
        """
        change = transitions.ended(state, reason, *self.reported(self.store.get(job_id)))
        try:
            job, _ = self._transition(job_id, change)
        except (NotFound, Conflict):
            raise
        except Exception as exc:
            log.warning("job %s: could not record its end (%s): tearing down first", job_id, exc)
            job = self.store.get(job_id)  # a read: a full disk still allows it
            gone = job.compute_state is ComputeState.NONE or self._teardown(job)
            try:
                job, _ = self._transition(job_id, change)
            except Exception as again:
                raise Unavailable(
                    f"job {job_id}: the job store could not record it {state.value}: {again}; "
                    f"its compute {'is torn down' if gone else 'is still owed a teardown'}: "
                    f"free space where the store is, then run `eph cancel {job_id}` again"
                ) from again
        return self._tell_parent(self.release(job))

    def _fail(self, job_id: str, reason: str) -> JobRecord:
        return self._transition(job_id, transitions.ended(JobState.FAILED, reason))[0]

    # -- the compare-and-swap loop -----------------------------------------------------------

    def _transition(self, job_id: str, change: Change) -> tuple[JobRecord, bool]:
        """Apply ``change`` to the newest record; (record, whether this call changed it)."""
        for _ in range(50):
            job = self.store.get(job_id)
            values = change(job)
            if values is None:
                return job, False
            if "reason" in values:
                values["reason"] = self.mask(values["reason"])
            try:
                updated = self.store.update(job.evolve(**values))
            except Conflict:
                continue
            log.info(
                "job %s: %s compute=%s %s",
                job_id,
                updated.state.value,
                updated.compute_state.value,
                updated.reason,
            )
            self._notify(updated)
            return updated, True
        raise Conflict(f"job {job_id} kept changing under 50 attempts to update it")

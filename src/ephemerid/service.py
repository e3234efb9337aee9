"""The one path every trigger takes: submit, start, complete, cancel, release.

Adapters (blob events, queue messages, cron, HTTP, the CLI) only turn an event into a JobSpec
and call ``submit``. Every change to a job is a compare-and-swap through ``_transition``, so two
instances handling the same event cannot both provision, and a lost race re-reads and retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ephemerid import names
from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes, safe_key
from ephemerid.compute import ComputeBackend, Handle, check_backend, check_nodes
from ephemerid.contract import Launch, Result, RunStatus
from ephemerid.errors import (
    CapacityUnavailable,
    Conflict,
    ContractError,
    EphemeridError,
    NotFound,
    SpecError,
)
from ephemerid.models import ModelRegistry, ModelVersion
from ephemerid.record import ComputeState, JobRecord, JobState, job_id_for, utcnow
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.store import JobStore

log = logging.getLogger("ephemerid")

_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules", ".ipynb_checkpoints"}
_RESULT_STATES: Mapping[RunStatus, JobState] = {
    RunStatus.SUCCEEDED: JobState.SUCCEEDED,
    RunStatus.FAILED: JobState.FAILED,
    RunStatus.TIMED_OUT: JobState.TIMED_OUT,
    RunStatus.EVICTED: JobState.FAILED,  # only a job already ended gets here: see complete()
}
Change = Callable[[JobRecord], dict[str, Any] | None]


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    created: bool


class Service:
    def __init__(
        self,
        store: JobStore,
        artifacts: ArtifactStore,
        backends: Mapping[str, ComputeBackend],
        settings: Settings,
        notify: Callable[[JobRecord], None] = lambda job: None,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.backends = backends
        self.settings = settings
        self.models = ModelRegistry(artifacts)
        self.notify = notify

    def close(self) -> None:
        """Close the store and every backend that holds a connection (an ARM client)."""
        self.store.close()
        for backend in self.backends.values():
            close = getattr(backend, "close", None)
            if close is not None:
                close()

    # -- submit ------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, key: str | None = None, source: str = "api") -> Submitted:
        """Accept ``spec`` once per idempotency key; refuse bad input before renting anything.

        A redelivery (a key already taken) is answered from the store before anything else is
        checked: it costs one read.
        """
        key = spec.idempotency_key or key or f"uuid:{uuid.uuid4()}"
        job_id = job_id_for(spec.kind.value, key)
        known = self._known(job_id, key)
        if known is not None:
            log.info("duplicate delivery for job %s (%s): nothing to do", job_id, source)
            return Submitted(known, created=False)
        backend = self._backend_name(spec)
        model = self._resolve_model(spec)
        inputs = self._input_keys(spec)
        files = self._check_code(spec)
        record = JobRecord(
            id=job_id,
            key=key,
            spec=spec,
            source=source,
            backend=backend,
            model_version=model.ref if model else "",
        )
        job, created = self.store.create_if_absent(record)
        if not created:
            log.info("duplicate delivery for job %s (%s): nothing to do", job.id, source)
            return Submitted(job, created=False)
        self.notify(job)
        try:
            self._write_launch(job, inputs, model, files)
        except (EphemeridError, OSError) as exc:
            failed = self._fail(job.id, f"could not stage the job: {exc}")
            return Submitted(failed, created=True)
        return Submitted(self.start(job.id), created=True)

    def _known(self, job_id: str, key: str) -> JobRecord | None:
        try:
            job = self.store.get(job_id)
        except NotFound:
            return None
        if job.key != key:  # a hash collision: never merged (create_if_absent refuses it)
            return None
        return job

    def _backend_name(self, spec: JobSpec) -> str:
        name = check_backend(spec.compute.backend or self.settings.backend)
        if name not in self.backends:
            raise SpecError(f"compute.backend '{name}' is not configured on this ephemerid")
        check_nodes(name, spec.compute.nodes)
        return name

    def _resolve_model(self, spec: JobSpec) -> ModelVersion | None:
        if spec.model is None:
            return None
        try:
            return self.models.resolve(spec.model)
        except NotFound as exc:
            raise SpecError(f"model: {exc}") from exc

    def _input_keys(self, spec: JobSpec) -> dict[str, str]:
        keys = {}
        for name, uri in spec.inputs.items():
            try:
                key = (
                    self.artifacts.key_of(uri.rstrip("/"))
                    if "://" in uri
                    else safe_key(uri.rstrip("/"))
                )
            except EphemeridError as exc:
                raise SpecError(f"inputs.{name}: {exc}") from exc
            if (
                self.artifacts.stat(key) is None
                and next(iter(self.artifacts.list(key.rstrip("/") + "/")), None) is None
            ):
                raise SpecError(f"inputs.{name}: '{uri}' does not exist")
            keys[name] = key
        return keys

    def _check_code(self, spec: JobSpec) -> list[Path]:
        """The files of a local code folder (none for code already in the bucket), checked."""
        if "://" in spec.code:
            try:
                prefix = self.artifacts.key_of(spec.code).rstrip("/")
            except EphemeridError as exc:
                raise SpecError(f"code: {exc}") from exc
            if self.artifacts.stat(f"{prefix}/{spec.entrypoint}") is None:
                raise SpecError(f"entrypoint '{spec.entrypoint}' is not in code '{spec.code}'")
            return []
        code = Path(spec.code)
        if not code.is_dir():
            raise SpecError(f"code: '{spec.code}' is not a directory")
        if not (code / spec.entrypoint).is_file():
            raise SpecError(f"entrypoint '{spec.entrypoint}' is not a file in '{spec.code}'")
        files = _code_files(code)
        size = sum(p.stat().st_size for p in files)
        if size > self.settings.code_limit_bytes:
            raise SpecError(
                f"code: '{spec.code}' holds {size} bytes, more than the "
                f"{self.settings.code_limit_bytes}-byte limit; keep data out of the code "
                "directory and pass it as inputs"
            )
        return files

    def _write_launch(
        self,
        job: JobRecord,
        inputs: dict[str, str],
        model: ModelVersion | None,
        files: list[Path],
    ) -> None:
        """Snapshot the code and write runs/<job>/job.json: all the runner will ever be told."""
        spec = job.spec
        if "://" in spec.code:
            code = self.artifacts.key_of(spec.code).rstrip("/")
        else:
            code = self._snapshot(Path(spec.code), files)
        launch = Launch(
            job_id=job.id,
            entrypoint=spec.entrypoint,
            args=spec.args,
            params=spec.params,
            max_runtime_s=spec.compute.max_runtime,
            code=code,
            inputs=inputs,
            model=model.files if model else None,
            heartbeat_s=self.settings.heartbeat_s,
            grace_s=self.settings.grace_s,
            log_limit_bytes=self.settings.log_limit_bytes,
        )
        put_bytes(self.artifacts, names.run_key(job.id, names.JOB_FILE), launch.dumps())

    def _snapshot(self, root: Path, files: list[Path]) -> str:
        """Upload the code folder once per content: runs/_code/<sha256>/, shared by its jobs.

        The manifest is written after the files, so a snapshot with a manifest is whole; a
        crash before it leaves files that the next job with that code writes again.
        """
        contents = {path.relative_to(root).as_posix(): path.read_bytes() for path in files}
        digest = hashlib.sha256()
        for name, data in contents.items():
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        prefix = names.code_key(digest.hexdigest())
        if self.artifacts.stat(f"{prefix}.json") is None:
            for name, data in contents.items():
                put_bytes(self.artifacts, f"{prefix}/{name}", data)
            manifest = {"files": sorted(contents)}
            put_bytes(self.artifacts, f"{prefix}.json", json.dumps(manifest).encode())
        return prefix

    # -- compute -----------------------------------------------------------------------------

    def start(self, job_id: str) -> JobRecord:
        """Provision compute for an accepted or waiting job; exactly one caller wins."""
        job, won = self._transition(job_id, _to_provisioning)
        if not won:
            return job
        backend = self.backends[job.backend]
        try:
            handle = backend.provision(job)
        except CapacityUnavailable as exc:
            return self._transition(job_id, _waiting(str(exc), exc.retry_after_s))[0]
        except Exception as exc:  # anything else: fail the job, and still owe a teardown
            log.exception("provisioning job %s failed", job_id)
            return self.release(self._fail(job_id, f"provisioning failed: {exc}"))
        job, _ = self._transition(job_id, _live(handle))
        return self.release(job) if job.state.terminal else job

    def release(self, job: JobRecord) -> JobRecord:
        """Tear the job's compute down; record ``released`` only once that is confirmed."""
        if job.compute_state in (ComputeState.NONE, ComputeState.RELEASED):
            return job
        backend = self.backends[job.backend]
        try:
            confirmed = backend.teardown(Handle(job.backend, job.id, job.handle))
        except EphemeridError as exc:
            log.warning("teardown of job %s not confirmed yet: %s", job.id, exc)
            confirmed = False
        if confirmed:
            return self._transition(job.id, _released)[0]
        return self._transition(job.id, lambda j: {"teardown_attempts": j.teardown_attempts + 1})[0]

    def dispatch_waiting(self) -> list[JobRecord]:
        """Try to place waiting jobs, oldest first, until one still finds no capacity.

        A job whose backend asked for a pause (``next_try_at``) is left until then.
        """
        started = []
        now = utcnow()
        for job in reversed(self.store.list([JobState.WAITING_FOR_CAPACITY])):
            if job.next_try_at and job.next_try_at > now:
                continue
            job = self.start(job.id)
            started.append(job)
            if job.state is JobState.WAITING_FOR_CAPACITY:
                break
        return started

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
        job, _ = self._transition(job_id, _finished(result))
        job = self.release(job)
        job = self.register_model(job)
        self.dispatch_waiting()
        return job

    def _evicted(self, job: JobRecord) -> JobRecord:
        """The platform took the compute back: release it, then run the job again on new compute.

        The runner uploaded the checkpoint first, so the next run resumes from it. Each step is
        safe to repeat: the result stays until the job is queued again, then moves aside.
        """
        retries = self.settings.eviction_retries
        if job.state in (JobState.PROVISIONING, JobState.RUNNING) and job.evictions >= retries:
            reason = f"evicted {job.evictions + 1} times; no retries left ({retries} allowed)"
            return self.release(self._fail(job.id, reason))
        if job.state in (JobState.PROVISIONING, JobState.RUNNING):
            job = self.release(job)
            if job.compute_state is not ComputeState.RELEASED:
                return job  # the teardown is owed: the reaper comes back to this result
            job, _ = self._transition(job.id, _requeued)
        if job.state is JobState.ACCEPTED:
            result = names.run_key(job.id, names.RESULT_FILE)
            aside = names.run_key(job.id, f"evicted-{job.evictions}.json")
            put_bytes(self.artifacts, aside, get_bytes(self.artifacts, result))
            self.artifacts.delete(result)
            return self.start(job.id)
        return job

    def register_model(self, job: JobRecord) -> JobRecord:
        """Register a succeeded train job's ``model/`` output (at most once per job)."""
        target = job.spec.register_as
        if not job.model_owed or target is None:
            return job
        model_dir = f"{names.run_key(job.id, names.OUTPUTS_DIR)}/model"
        version = self.models.register(target.name, model_dir, job_id=job.id, metrics=job.metrics)
        if target.alias:
            self.models.promote(version.name, version.version, target.alias)
        return self._transition(job.id, lambda j: {"model_version": version.ref})[0]

    def cancel(self, job_id: str, reason: str = "cancelled by user") -> JobRecord:
        return self.end(job_id, JobState.CANCELLED, reason)

    def end(self, job_id: str, state: JobState, reason: str) -> JobRecord:
        """Move an unfinished job to terminal ``state`` and give its compute back."""
        job, _ = self._transition(job_id, _ended(state, reason))
        return self.release(job)

    def _fail(self, job_id: str, reason: str) -> JobRecord:
        return self._transition(job_id, _ended(JobState.FAILED, reason))[0]

    # -- the compare-and-swap loop -----------------------------------------------------------

    def _transition(self, job_id: str, change: Change) -> tuple[JobRecord, bool]:
        """Apply ``change`` to the newest record; (record, whether this call changed it)."""
        for _ in range(50):
            job = self.store.get(job_id)
            values = change(job)
            if values is None:
                return job, False
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
            self.notify(updated)
            return updated, True
        raise Conflict(f"job {job_id} kept changing under 50 attempts to update it")


def _code_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not _SKIP_DIRS.intersection(p.relative_to(root).parts)
    )


def _to_provisioning(job: JobRecord) -> dict[str, Any] | None:
    if job.state not in (JobState.ACCEPTED, JobState.WAITING_FOR_CAPACITY):
        return None
    return {
        "state": JobState.PROVISIONING,
        "compute_state": ComputeState.REQUESTED,
        "compute_requested_at": utcnow(),
        "reason": "",
    }


def _waiting(reason: str, retry_after_s: float | None = None) -> Change:
    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state is not JobState.PROVISIONING:
            return None
        now = utcnow()
        return {
            "state": JobState.WAITING_FOR_CAPACITY,
            "compute_state": ComputeState.NONE,
            "compute_requested_at": None,
            "reason": reason,
            "waiting_since": job.waiting_since or now,
            "next_try_at": now + timedelta(seconds=retry_after_s) if retry_after_s else None,
        }

    return change


def _requeued(job: JobRecord) -> dict[str, Any] | None:
    """An evicted job whose compute is released goes back to ACCEPTED for new compute."""
    if job.state.terminal or job.compute_state is not ComputeState.RELEASED:
        return None
    return {
        "state": JobState.ACCEPTED,
        "reason": f"evicted by Azure (eviction {job.evictions + 1}): resuming on new compute",
        "compute_state": ComputeState.NONE,
        "handle": {},
        "earlier_compute": [*job.earlier_compute, job.rental("evicted")],
        "evictions": job.evictions + 1,
        "compute_requested_at": None,
        "live_at": None,
        "released_at": None,
        "waiting_since": None,
        "next_try_at": None,
        "price_per_hour": None,
        "billed_tail_s": 0.0,
    }


def _live(handle: Handle) -> Change:
    def change(job: JobRecord) -> dict[str, Any] | None:
        values: dict[str, Any] = {"handle": handle.data, "next_try_at": None}
        values.update(sku=handle.sku, spot=handle.spot, price_per_hour=handle.price_per_hour)
        values.update(billed_tail_s=handle.billed_tail_s)
        if job.compute_state is ComputeState.REQUESTED:
            values.update(compute_state=ComputeState.LIVE, live_at=utcnow())
        if job.compute_state is ComputeState.RELEASED:  # cancelled while it was provisioned
            values.update(compute_state=ComputeState.LIVE)
        if job.state is JobState.PROVISIONING:
            values["state"] = JobState.RUNNING
        return values

    return change


def _released(job: JobRecord) -> dict[str, Any] | None:
    if job.compute_state is ComputeState.RELEASED:
        return None
    return {"compute_state": ComputeState.RELEASED, "released_at": utcnow()}


def _ended(state: JobState, reason: str) -> Change:
    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state.terminal:
            return None
        return {"state": state, "reason": reason, "finished_at": job.finished_at or utcnow()}

    return change


def _finished(result: Result) -> Change:
    def change(job: JobRecord) -> dict[str, Any] | None:
        if job.state.terminal:
            return None
        return {
            "state": _RESULT_STATES[result.status],
            "reason": result.reason,
            "exit_code": result.exit_code,
            "started_at": result.started_at,
            "finished_at": result.finished_at or utcnow(),
            "metrics": dict(result.metrics),
            "outputs": list(result.outputs),
        }

    return change

"""Azure ML compute: each job is a command job on an AmlCompute cluster that scales to zero.

``provision`` submits one command job per job through ``azure-ai-ml`` (``MLClient.jobs``), named
from the job id (``eph-<job>-<attempt>``) so a retried provision finds the job it already
submitted instead of a second. The cluster (made by infra/ with ``min_instances=0``) is the
engine's: it scales nodes up for the job, queues jobs while it is full, and scales back to zero
``idle_s`` after the last one, which the job's bill counts as its tail. The job runs the same
runner as every backend, in ``EPHEMERID_AML_ENVIRONMENT`` or, by default, ephemerid's own runner
environment, registered on the first provision under a version that is its content's digest
(``compute/aml_environment.py``: versions cannot change on Azure ML), or the job's own
``environment``, registered likewise. Its command line is fixed text; the job id and bucket URI
reach it as environment values, checked against a strict pattern. The job's run folder and
outputs are ``uri_folder`` on the ``runs`` datastore (direct: nothing is mounted, the runner
moves the files); the job carries Azure ML's own timeout (max runtime plus margins), its deadline.

``compute.nodes > 1`` makes a distributed job: ``instance_count`` nodes with a
``PyTorchDistribution`` of one process per GPU (``compute.gpus`` is per node); each process is a
runner with ``RANK``/``WORLD_SIZE``, and only rank 0 writes the result.

``poll`` maps Azure ML's status (below); ``teardown`` cancels a job that is not finished and
returns True only once Azure ML says it is terminal (a job whose ``result.json`` is written is
ending by itself: it gets ``finish_wait_s`` to do so, so that Azure ML records it Completed,
before it is cancelled); ``list_owned`` is every unfinished job of
the workspace tagged ``ephemerid-job``. SDK errors become ``ComputeError``s that say what to
change: quota, a missing workspace or cluster, a missing role. A job Azure ML fails for want of
quota after accepting it (its error read from run history) is ``UNPLACED``: placed again after a
backoff, as ``<name>-q<n>``, until ``max_wait_s``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ephemerid import names
from ephemerid.artifacts import ArtifactStore
from ephemerid.azure import clients
from ephemerid.azure.compute import (
    TAG_JOB,
    check_env,
    compute_name,
    deadline_margin_s,
    runner_env,
)
from ephemerid.azure.errors import describe, transient
from ephemerid.compute import ComputeStatus, Handle, aml_job
from ephemerid.compute.aml_environment import Registered, RunnerEnvironment, for_job
from ephemerid.compute.prices import PriceTable
from ephemerid.envs.setup import ENV_READY
from ephemerid.errors import BadInput, CapacityUnavailable, ComputeError, SpecError, Unavailable
from ephemerid.record import JobRecord
from ephemerid.settings import AzureMlSettings, Settings
from ephemerid.spec import JobSpec, Spot

log = logging.getLogger("ephemerid")
MAX_PLACEMENTS = 100  # Azure ML jobs per attempt: the first and those after quota failures
__all__ = ["COMMAND", "TAG_JOB", "AzureMlCompute", "connect", "status_of"]
COMMAND, status_of = aml_job.COMMAND, aml_job.status_of

# The SDK warns once per schema it calls experimental when it first builds a job (six lines on
# every cold start); its per-call activity log does not propagate. ephemerid logs what it did.
EXPERIMENTAL_LOGGER = "azure.ai.ml._utils._experimental"


def connect(config: AzureMlSettings) -> Any:
    """The real MLClient: Azure with DefaultAzureCredential, or the local simulator."""
    logging.getLogger(EXPERIMENTAL_LOGGER).setLevel(logging.ERROR)
    return _client(config)


def _client(config: AzureMlSettings) -> Any:
    return clients.ml_client(
        config.subscription_id, config.resource_group, config.workspace, config.arm_endpoint
    )


class AzureMlCompute:
    name = "azure-ml"

    def __init__(
        self,
        connect: Callable[[], Any],
        config: AzureMlSettings,
        artifacts: ArtifactStore,
        *,
        prices: PriceTable | None = None,
        timeout_s: float = 600.0,
        deadline_margin_s: float = 900.0,
        runner: RunnerEnvironment | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._connect: Callable[[], Any] = connect
        self._client: Any = None
        self._connecting = threading.Lock()
        self.config, self.artifacts = config, artifacts
        self.artifacts_uri = artifacts.root_uri
        self.prices = prices or PriceTable.load()
        self.timeout_s, self.deadline_margin_s = timeout_s, deadline_margin_s
        self._sleep = sleep
        self.runner = runner or RunnerEnvironment.load()
        self._registered = Registered()  # environment versions known to be there, by version
        self._where = f"workspace '{config.workspace}' (resource group '{config.resource_group}')"
        if self.artifacts_uri.startswith("az://") and not config.blob_service_uri:
            raise BadInput(
                "azure-ml: the cluster's runner reaches the bucket with its identity: set "
                "EPHEMERID_STORAGE__accountName or EPHEMERID_STORAGE__blobServiceUri"
            )

    @property
    def jobs(self) -> Any:
        """``MLClient.jobs``, the client made on first use: importing azure.ai.ml takes 0.7 s,
        which a function instance that never touches Azure ML should not pay at cold start."""
        return self._ml().jobs

    @property
    def environments(self) -> Any:
        return self._ml().environments

    def _ml(self) -> Any:
        with self._connecting:
            if self._client is None:
                self._client = self._connect()
            return self._client

    @classmethod
    def from_settings(cls, settings: Settings, artifacts: ArtifactStore) -> AzureMlCompute:
        if settings.azure_ml is None:
            raise BadInput("the azure-ml backend is not configured: see docs/azure-ml.md")
        config = settings.azure_ml
        if config.environment and (config.conda_file or config.image):
            raise BadInput(
                "EPHEMERID_AML_CONDA_FILE and EPHEMERID_AML_IMAGE define ephemerid's own runner "
                f"environment, and EPHEMERID_AML_ENVIRONMENT={config.environment!r} names "
                "another: unset one or the other"
            )
        return cls(
            lambda: connect(config),
            config,
            artifacts,
            prices=PriceTable.load(settings.price_table),
            timeout_s=settings.provision_timeout_s,
            deadline_margin_s=deadline_margin_s(settings),
            runner=RunnerEnvironment.load(config.conda_file, config.image),
        )

    # -- the verbs ---------------------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        """Refuse what this cluster cannot give, before the job is accepted."""
        request, cluster = spec.compute, f"cluster '{self.config.cluster}'"
        sku = self.config.node_sku
        if request.skus and sku.lower() not in {s.lower() for s in request.skus}:
            raise SpecError(
                f"compute.skus {request.skus}: {cluster} runs {sku} nodes only; add {sku} to "
                "skus, drop skus, or use the azure-vm backend"
            )
        if request.spot is Spot.ONLY and not self.config.low_priority:
            raise SpecError(
                f"compute.spot: only: {cluster} has dedicated nodes, not low-priority ones; "
                "use spot: prefer or never, or a low-priority cluster (EPHEMERID_AML_LOW_PRIORITY)"
            )

    def close(self) -> None:
        """``MLClient`` has no close: drop it, and the next call makes a new one (and looks up
        the runner's environment again)."""
        with self._connecting:
            self._client = None
        self._registered.forget()

    def provision(self, job: JobRecord) -> Handle:
        """Submit the job's Azure ML job, or find the one submitted; one that Azure ML failed
        for want of quota is submitted again, as ``<name>-q<n>``, after a backoff."""
        from azure.core.exceptions import AzureError

        base = compute_name(self.name, "an Azure ML job", job.id, job.evictions)
        for tries in range(MAX_PLACEMENTS):
            name = f"{base}-q{tries}" if tries else base
            found = self._find(name)
            if found is None:
                break
            try:
                why = aml_job.status(found) == "Failed" and self._quota_failure(name)
            except Unavailable as exc:  # not known yet whether it was quota: ask again later
                raise CapacityUnavailable(str(exc), retry_after_s=self.config.backoff_s) from exc
            if not why:
                log.info("azure-ml: job %s already has Azure ML job %s: using it", job.id, name)
                return self._handle(job.id, found)
        else:
            raise ComputeError(f"azure-ml: job {job.id} was placed {MAX_PLACEMENTS} times")
        if tries:
            aml_job.wait_for_quota(self.config, job, tries, str(why))
        try:
            created = self.jobs.create_or_update(self._command(job, name))
        except AzureError as exc:
            found = self._find(name)  # a provision racing this one submitted it first
            if found is None:
                raise self._refused(job, name, exc) from exc
            created = found
        log.info("azure-ml: job %s submitted as %s (%s)", job.id, name, aml_job.status(created))
        return self._handle(job.id, created)

    def poll(self, handle: Handle) -> ComputeStatus:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        name = handle.data.get("aml_job")
        if not name:
            return ComputeStatus.GONE
        try:
            status = aml_job.status(self.jobs.get(name))
            if status == "Failed" and self._quota_failure(name):
                return ComputeStatus.UNPLACED
        except ResourceNotFoundError:
            return ComputeStatus.GONE
        except AzureError as exc:  # unknown is not gone: the heartbeat decides
            log.warning("azure-ml: cannot read job %s now: %s", name, describe(exc))
            return ComputeStatus.RUNNING
        beat = names.run_key(handle.job_id, names.HEARTBEAT_FILE)
        started = status not in aml_job.RUNNING or self.artifacts.stat(beat) is not None
        return aml_job.status_of(status, started)

    def teardown(self, handle: Handle) -> bool:
        """Cancel the job's Azure ML job(s) and confirm each is terminal."""
        name = handle.data.get("aml_job")
        jobs = [name] if name else self._names_of(handle.job_id)
        result = names.run_key(handle.job_id, names.RESULT_FILE)
        ending = bool(jobs) and self.artifacts.stat(result) is not None
        confirmed = [self._cancel(n, ending) for n in jobs]
        return all(confirmed)

    def list_owned(self) -> list[Handle]:
        return [Handle(self.name, j.tags[TAG_JOB], self._data(j)) for j in self._owned()]

    # -- Azure ML ----------------------------------------------------------------------------

    def _find(self, name: str) -> Any | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self.jobs.get(name)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise self._refused(None, name, exc, verb="reading job") from exc

    def _quota_failure(self, name: str) -> str:
        """Azure ML's error when it failed ``name`` for want of quota, else ''. The job resource
        carries no error: run history has it, read through the SDK's own run-history client
        (``JobOperations._runs_operations``, not public: if it is gone, every failure is the
        job's, as before). Unavailable when run history cannot be read now."""
        from azure.core.exceptions import AzureError

        try:
            details = self.jobs._runs_operations.get_run_details(name)
        except AttributeError as exc:  # this SDK has no run-history client there
            log.warning("azure-ml: cannot read why job %s failed: %s", name, exc)
            return ""
        except AzureError as exc:
            if transient(exc):
                why = f"azure-ml: run history of {name} cannot be read now: {describe(exc)}"
                raise Unavailable(why) from exc
            log.warning("azure-ml: cannot read why job %s failed: %s", name, describe(exc))
            return ""
        return aml_job.quota_failure(details)

    def _cancel(self, name: str, ending: bool) -> bool:
        """Cancel ``name`` unless it is finished; True once Azure ML reports it terminal.

        ``ending``: its runner is done, so Azure ML is about to end it; wait for that first.
        The cancel's operation answers Retry-After of 10 s or more: it is never waited on. The
        POST is sent, the job is read for ``cancel_wait_s``, and a cancel not confirmed by then
        is left owed: the next teardown (the reaper's) reads it again and sends no second POST.
        """
        from azure.core.exceptions import AzureError

        if ending and self._ends_by_itself(name):
            return True
        try:
            job = self._find(name)
            if job is None or aml_job.status(job) in aml_job.FINISHED:
                return True
            if aml_job.status(job) != "CancelRequested":
                self.jobs.begin_cancel(name, polling=False)  # the POST; no poller, no thread
        except AzureError as exc:
            if not transient(exc) and not self._ended(name):  # it may have just ended
                why = describe(exc)
                raise ComputeError(f"azure-ml: cancelling job {name} failed: {why}") from exc
            log.warning("azure-ml: cancelling job %s: %s; tried again later", name, describe(exc))
        except ComputeError as exc:  # reading it failed: the next teardown reads it again
            log.warning("azure-ml: job %s not confirmed ended (%s); teardown stays owed", name, exc)
            return False
        return self._confirmed(name, self.config.cancel_wait_s)

    def _ends_by_itself(self, name: str) -> bool:
        return self._confirmed(name, self.config.finish_wait_s, quiet=True)

    def _confirmed(self, name: str, wait_s: float, quiet: bool = False) -> bool:
        """Whether ``name`` is terminal within ``wait_s``, read every ``arm_retry_s`` (<= 1 s)."""
        deadline = time.monotonic() + wait_s
        while True:
            with contextlib.suppress(ComputeError):
                if self._ended(name):
                    return True
            if time.monotonic() >= deadline:
                if not quiet:
                    log.info("azure-ml: job %s is still ending; teardown stays owed", name)
                return False
            self._sleep(min(max(self.config.arm_retry_s, 0.05), 1.0))

    def _ended(self, name: str) -> bool:
        job = self._find(name)
        return job is None or aml_job.status(job) in aml_job.FINISHED

    def _owned(self) -> list[Any]:
        from azure.core.exceptions import AzureError

        try:
            jobs = list(self.jobs.list(tag=TAG_JOB))
        except AzureError as exc:
            raise ComputeError(
                f"azure-ml: cannot list the jobs of {self._where}: {describe(exc)}"
            ) from exc
        return [
            j
            for j in jobs
            if j and (j.tags or {}).get(TAG_JOB) and aml_job.status(j) not in aml_job.FINISHED
        ]

    def _names_of(self, job_id: str) -> list[str]:
        return [str(j.name) for j in self._owned() if j.tags[TAG_JOB] == job_id]

    # -- what is sent ------------------------------------------------------------------------

    def _command(self, job: JobRecord, name: str) -> Any:
        environment, env = self._environment(job), self._runner_env(job.id)
        if environment[1]:  # the job runs in its own environment: its runner builds nothing
            env[ENV_READY] = environment[1]
        return aml_job.command_job(
            job,
            name,
            self.config,
            environment=environment[0],
            env=env,
            timeout_s=int(job.spec.compute.max_runtime + self.deadline_margin_s),
        )

    def _environment(self, job: JobRecord) -> tuple[str, str]:
        """The job's environment (its own, registered once per version, or the runner's: the
        setting's, or ephemerid's own, registered once per version), and its identity if own."""
        from azure.core.exceptions import AzureError

        own = for_job(self.artifacts, job.id, self.runner) if job.environment else None
        if own is None and self.config.environment:
            return self.config.environment, ""
        wanted = own[0] if own else self.runner
        try:
            ref = self._registered.reference(lambda: self.environments, wanted, self._where)
        except AzureError as exc:
            what, verb = f"{wanted.name}:{wanted.version}", "registering environment"
            raise self._refused(None, what, exc, verb=verb) from exc
        log.info("azure-ml: job %s runs in environment %s", job.id, ref)
        return ref, own[1] if own else ""

    def _runner_env(self, job_id: str) -> dict[str, str]:
        config = self.config
        env = runner_env(
            self.artifacts_uri, job_id, config.blob_service_uri, config.identity_client_id
        )
        return check_env(self.name, "the job's environment", env)

    def _handle(self, job_id: str, aml_job: Any) -> Handle:
        data = self._data(aml_job)
        price = self.prices.per_hour(self.config.node_sku, self.config.low_priority)
        return Handle(
            self.name,
            job_id,
            data,
            self.config.node_sku,
            self.config.low_priority,
            None if price is None else price * data["nodes"],
            billed_tail_s=self.config.idle_s,
        )

    def _data(self, aml_job: Any) -> dict[str, Any]:
        resources = getattr(aml_job, "resources", None)
        return {
            "aml_job": str(aml_job.name),
            "workspace": self.config.workspace,
            "cluster": self.config.cluster,
            "nodes": int(getattr(resources, "instance_count", None) or 1),
        }

    def _refused(
        self, job: JobRecord | None, name: str, exc: Exception, verb: str = "submitting job"
    ) -> ComputeError:
        return aml_job.refused(self.config, job, name, exc, self._where, verb)

"""Azure ML compute: each job is a command job on an AmlCompute cluster that scales to zero.

``provision`` submits one command job per job through ``azure-ai-ml`` (``MLClient.jobs``), named
from the job id (``eph-<job>-<attempt>``) so a retried provision finds the job it already
submitted instead of a second. The cluster (made by infra/ with ``min_instances=0``) is the
engine's: it scales nodes up for the job, queues jobs while it is full, and scales back to zero
``idle_s`` after the last one, which the job's bill counts as its tail. The job runs the same
runner as every backend, in a registered environment whose image has ephemerid installed; its
command line is fixed text, and the job id and bucket URI reach it as environment values,
checked against a strict pattern. The job's run folder and outputs are declared as
``uri_folder`` on the ``runs`` datastore (direct: nothing is mounted, the runner moves the
files), and the job carries Azure ML's own timeout, max runtime plus margins: the compute's
own deadline.

``compute.nodes > 1`` makes a distributed job: ``instance_count`` nodes with a
``PyTorchDistribution`` of one process per GPU (``compute.gpus`` is per node); each process is a
runner with ``RANK``/``WORLD_SIZE``, and only rank 0 writes the result.

``poll`` maps Azure ML's status (below); ``teardown`` cancels a job that is not finished and
returns True only once Azure ML says it is terminal (a job whose ``result.json`` is written is
ending by itself: it gets ``finish_wait_s`` to do so, so that Azure ML records it Completed,
before it is cancelled); ``list_owned`` is every unfinished job of
the workspace tagged ``ephemerid-job``. SDK errors become ``ComputeError``s that say what to
change: quota, a missing workspace or cluster, a missing role.
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
from ephemerid.azure.errors import describe, error_tree, transient
from ephemerid.compute import ComputeStatus, Handle
from ephemerid.compute.prices import PriceTable
from ephemerid.errors import BadInput, ComputeError, SpecError
from ephemerid.record import JobRecord
from ephemerid.settings import AzureMlSettings, Settings
from ephemerid.spec import JobSpec, Spot

log = logging.getLogger("ephemerid")
__all__ = ["COMMAND", "TAG_JOB", "AzureMlCompute", "connect", "status_of"]

# The whole command Azure ML runs in the job's shell: no value from the job is in it.
COMMAND = (
    'python -m ephemerid.runner --artifacts "$EPHEMERID_ARTIFACTS" --job "$EPHEMERID_JOB" '
    "--work-dir ephemerid-work"
)
STARTING = frozenset({"NotStarted", "Starting", "Provisioning", "Preparing", "Queued"})
FINISHED = frozenset({"Completed", "Failed", "Canceled"})
# Azure ML runs the command in these; the runner is up once it has beaten (at its start).
RUNNING = frozenset({"Running", "NotResponding"})
# Every other status (Finalizing, CancelRequested, Paused, Unknown) is compute still held: the
# job's own heartbeat decides whether it is lost. NotResponding (Azure ML has not heard from the
# node lately) is not a failure by itself: the bound is the runner's heartbeat timeout.


def status_of(aml_status: str, runner_started: bool = True) -> ComputeStatus:
    """The compute's status; ``runner_started``: the job's runner has written a heartbeat.

    A job that Azure ML reports ``Running`` before its runner's first beat is still starting:
    its image build and queueing may have outlasted the heartbeat timeout, and the container's
    start comes before the runner's. Bounded by ``max_runtime`` and Azure ML's own timeout.
    """
    if aml_status in FINISHED:
        return ComputeStatus.GONE
    if aml_status in STARTING or (aml_status in RUNNING and not runner_started):
        return ComputeStatus.STARTING
    return ComputeStatus.RUNNING


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
        with self._connecting:
            if self._client is None:
                self._client = self._connect()
            return self._client.jobs

    @classmethod
    def from_settings(cls, settings: Settings, artifacts: ArtifactStore) -> AzureMlCompute:
        if settings.azure_ml is None:
            raise BadInput("the azure-ml backend is not configured: see docs/azure-ml.md")
        config = settings.azure_ml
        return cls(
            lambda: connect(config),
            config,
            artifacts,
            prices=PriceTable.load(settings.price_table),
            timeout_s=settings.provision_timeout_s,
            deadline_margin_s=deadline_margin_s(settings),
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
        """``MLClient`` has no close: drop it, and the next call makes a new one."""
        with self._connecting:
            self._client = None

    def provision(self, job: JobRecord) -> Handle:
        from azure.core.exceptions import AzureError

        name = compute_name(self.name, "an Azure ML job", job.id, job.evictions)
        found = self._find(name)
        if found is not None:
            log.info("azure-ml: job %s already has Azure ML job %s: using it", job.id, name)
            return self._handle(job.id, found)
        try:
            created = self.jobs.create_or_update(self._command(job, name))
        except AzureError as exc:
            found = self._find(name)  # a provision racing this one submitted it first
            if found is None:
                raise self._refused(job, name, exc) from exc
            created = found
        log.info("azure-ml: job %s submitted as %s (%s)", job.id, name, _status(created))
        return self._handle(job.id, created)

    def poll(self, handle: Handle) -> ComputeStatus:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        name = handle.data.get("aml_job")
        if not name:
            return ComputeStatus.GONE
        try:
            status = _status(self.jobs.get(name))
        except ResourceNotFoundError:
            return ComputeStatus.GONE
        except AzureError as exc:  # unknown is not gone: the heartbeat decides
            log.warning("azure-ml: cannot read job %s now: %s", name, describe(exc))
            return ComputeStatus.RUNNING
        beat = names.run_key(handle.job_id, names.HEARTBEAT_FILE)
        return status_of(status, status not in RUNNING or self.artifacts.stat(beat) is not None)

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
            raise self._refused(None, name, exc, verb="reading") from exc

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
            if job is None or _status(job) in FINISHED:
                return True
            if _status(job) != "CancelRequested":
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
        return job is None or _status(job) in FINISHED

    def _owned(self) -> list[Any]:
        from azure.core.exceptions import AzureError

        try:
            jobs = list(self.jobs.list(tag=TAG_JOB))
        except AzureError as exc:
            raise ComputeError(
                f"azure-ml: cannot list the jobs of {self._where}: {describe(exc)}"
            ) from exc
        return [j for j in jobs if j and (j.tags or {}).get(TAG_JOB) and _status(j) not in FINISHED]

    def _names_of(self, job_id: str) -> list[str]:
        return [str(j.name) for j in self._owned() if j.tags[TAG_JOB] == job_id]

    # -- what is sent ------------------------------------------------------------------------

    def _command(self, job: JobRecord, name: str) -> Any:
        from azure.ai.ml import Input, Output, PyTorchDistribution, command
        from azure.ai.ml.entities import ManagedIdentityConfiguration

        request = job.spec.compute
        folder = f"azureml://datastores/{self.config.datastore}/paths/{job.id}/"
        distribution = None
        if request.nodes > 1:
            distribution = PyTorchDistribution(process_count_per_instance=max(request.gpus, 1))
        identity = None
        if self.config.identity_client_id:
            identity = ManagedIdentityConfiguration(client_id=self.config.identity_client_id)
        return command(
            name=name,
            display_name=job.spec.name or job.id,
            experiment_name=self.config.experiment,
            command=COMMAND,
            environment=self.config.environment,
            compute=self.config.cluster,
            instance_count=request.nodes,
            distribution=distribution,
            environment_variables=self._runner_env(job.id),
            inputs={"job": Input(type="uri_folder", path=folder, mode="direct")},
            outputs={"outputs": Output(type="uri_folder", path=f"{folder}outputs/", mode="direct")},
            tags={TAG_JOB: job.id},
            timeout=int(request.max_runtime + self.deadline_margin_s),
            identity=identity,
        )

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
        self, job: JobRecord | None, name: str, exc: Exception, verb: str = "submitting"
    ) -> ComputeError:
        """The SDK's error as a sentence that says what to change."""
        from azure.core.exceptions import ClientAuthenticationError

        text = describe(exc)
        status = getattr(exc, "status_code", None)
        codes = " ".join(f"{e.get('code')} {e.get('message')}" for e in error_tree(exc)).lower()
        cluster = f"cluster '{self.config.cluster}'"
        if job is not None and "quota" in codes + text.lower():
            nodes = job.spec.compute.nodes
            return ComputeError(
                f"azure-ml: no quota for {nodes} {self.config.node_sku} node(s) on {cluster}: "
                f"{text}. Ask for more vCPU quota for that family in the workspace's region, "
                "or use fewer compute.nodes"
            )
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            return ComputeError(
                f"azure-ml: not allowed to use {self._where}: {text}. The function app's "
                "identity needs the AzureML Data Scientist role on the workspace"
            )
        if status == 404:
            return ComputeError(
                f"azure-ml: {self._where} was not found: {text}. Check "
                "EPHEMERID_AML_WORKSPACE and EPHEMERID_AML_RESOURCE_GROUP"
            )
        if "computenotfound" in codes or ("compute" in codes and "not find" in codes):
            return ComputeError(
                f"azure-ml: {cluster} is not in {self._where}: {text}. Create it "
                "(infra/modules/aml.bicep) or set EPHEMERID_AML_CLUSTER"
            )
        return ComputeError(f"azure-ml: {verb} job {name} on {cluster} failed: {text}")


def _status(aml_job: Any) -> str:
    """The job's status as Azure ML spells it (the SDK gives a str enum or a plain str)."""
    status = getattr(aml_job, "status", None)
    return str(getattr(status, "value", status) or "")

"""The Azure ML job's shape: the command job that is sent, and how its status and errors read.

The azure-ml backend's verbs (``compute/azure_ml.py``) call these; nothing here talks to Azure.
"""

from __future__ import annotations

from typing import Any

from ephemerid.azure.compute import TAG_JOB
from ephemerid.azure.errors import describe, error_tree
from ephemerid.compute import ComputeStatus
from ephemerid.errors import CapacityUnavailable, ComputeError
from ephemerid.record import JobRecord, utcnow
from ephemerid.settings import AzureMlSettings

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


def command_job(
    job: JobRecord,
    name: str,
    config: AzureMlSettings,
    *,
    environment: str,
    env: dict[str, str],
    timeout_s: int,
) -> Any:
    """The command job for ``job``, named ``name``: what the PUT sends."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    request = job.spec.compute
    folder = f"azureml://datastores/{config.datastore}/paths/{job.id}/"
    distribution = None
    if request.nodes > 1:
        distribution = PyTorchDistribution(process_count_per_instance=max(request.gpus, 1))
    identity = None
    if config.identity_client_id:
        identity = ManagedIdentityConfiguration(client_id=config.identity_client_id)
    return command(
        name=name,
        display_name=job.spec.name or job.id,
        experiment_name=config.experiment,
        command=COMMAND,
        environment=environment,
        compute=config.cluster,
        instance_count=request.nodes,
        distribution=distribution,
        environment_variables=env,
        inputs={"job": Input(type="uri_folder", path=folder, mode="direct")},
        outputs={"outputs": Output(type="uri_folder", path=f"{folder}outputs/", mode="direct")},
        tags={TAG_JOB: job.id},
        timeout=timeout_s,
        identity=identity,
    )


def refused(
    config: AzureMlSettings,
    job: JobRecord | None,
    name: str,
    exc: Exception,
    where: str,
    verb: str = "submitting job",
) -> ComputeError:
    """The SDK's error as a sentence that says what to change."""
    from azure.core.exceptions import ClientAuthenticationError

    text = describe(exc)
    status = getattr(exc, "status_code", None)
    codes = " ".join(f"{e.get('code')} {e.get('message')}" for e in error_tree(exc)).lower()
    cluster = f"cluster '{config.cluster}'"
    if job is not None and "quota" in codes + text.lower():
        nodes = job.spec.compute.nodes
        return ComputeError(
            f"azure-ml: no quota for {nodes} {config.node_sku} node(s) on {cluster}: "
            f"{text}. Ask for more vCPU quota for that family in the workspace's region, "
            "or use fewer compute.nodes"
        )
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return ComputeError(
            f"azure-ml: not allowed to use {where}: {text}. The function app's "
            "identity needs the AzureML Data Scientist role on the workspace"
        )
    if status == 404:
        return ComputeError(
            f"azure-ml: {where} was not found: {text}. Check "
            "EPHEMERID_AML_WORKSPACE and EPHEMERID_AML_RESOURCE_GROUP"
        )
    if "computenotfound" in codes or ("compute" in codes and "not find" in codes):
        return ComputeError(
            f"azure-ml: {cluster} is not in {where}: {text}. Create it "
            "(infra/modules/aml.bicep) or set EPHEMERID_AML_CLUSTER"
        )
    return ComputeError(f"azure-ml: {verb} {name} on {cluster} failed: {text}")


def quota_failure(details: Any) -> str:
    """The message of run history's error (``RunDetails.error``) when it is about quota, else ''.

    Read as the PUT's refusals are: "quota" in any code or message of the error's tree.
    """
    root = getattr(getattr(details, "error", None), "error", None)
    if root is None:
        return ""
    words, stack = [], [root]
    while stack:
        error = stack.pop()
        words += [str(getattr(error, "code", "") or ""), str(getattr(error, "message", "") or "")]
        stack += list(getattr(error, "details", None) or [])
        inner = getattr(error, "inner_error", None)
        while inner is not None:
            words.append(str(getattr(inner, "code", "") or ""))
            inner = getattr(inner, "inner_error", None)
    return str(root.message or root.code) if "quota" in " ".join(words).lower() else ""


def wait_for_quota(config: AzureMlSettings, job: JobRecord, tries: int, why: str) -> None:
    """Wait (CapacityUnavailable) until the backoff after the ``tries``-th quota failure is
    over, then return; past ``max_wait_s`` of waiting, fail the job saying what to do."""
    waited = (utcnow() - job.waiting_since).total_seconds() if job.waiting_since else 0.0
    cluster = f"{job.spec.compute.nodes} {config.node_sku} node(s) on cluster "
    cluster += f"'{config.cluster}'"
    if waited >= config.max_wait_s:
        raise ComputeError(
            f"azure-ml: no quota for {cluster} after waiting {waited:.0f}s "
            f"(EPHEMERID_CAPACITY_MAX_WAIT_S={config.max_wait_s:.0f}): {why}. Ask for "
            "more vCPU quota for that family in the workspace's region, or use fewer "
            "compute.nodes"
        )
    if job.next_try_at is None or job.next_try_at > utcnow():
        retry = min(config.backoff_s * 2 ** (tries - 1), 600.0)
        raise CapacityUnavailable(
            f"azure-ml: Azure ML failed it for want of quota for {cluster} ({why}); "
            f"submitting it again in {retry:.0f}s (waited {waited:.0f}s)",
            retry_after_s=retry,
        )


def status(aml_job: Any) -> str:
    """The job's status as Azure ML spells it (the SDK gives a str enum or a plain str)."""
    status = getattr(aml_job, "status", None)
    return str(getattr(status, "value", status) or "")

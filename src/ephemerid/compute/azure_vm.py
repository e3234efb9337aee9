"""Azure VM compute: one GPU VM per job, rented through Azure Resource Manager, always given back.

``provision`` makes one VM per job, named from the job id (``eph-<job>-<attempt>``) so a retried
provision finds the VM it already started; what it sends (the VM body, its cloud-init) is
``ephemerid.compute.vm_body``.

Placement tries, in order, each spot choice (``spot: prefer`` tries spot first), each SKU of the
spec and each configured region or zone. Capacity and quota refusals move on to the next; a
transient failure of the create (5xx, an exhausted 429, a retryable code on its long-running
operation) is tried again at the same placement, ``RETRIES`` times, then counts as a refusal.
When none fits, ``CapacityUnavailable`` makes the job wait with backoff, and after ``max_wait`` a
``ComputeError`` fails it with every attempt listed. A ``Retry-After`` longer than the ARM client
sleeps (``RETRY_AFTER_CAP_S``) is not waited out in the call: the job waits it out instead
(``next_try_at``).

``teardown`` DELETEs with ``forceDeletion=false``, waits on the long-running operation and
returns True only when a GET answers 404; transient ARM errors (and a 409: another operation in
progress) are retried with backoff, and an unconfirmed teardown returns False so it stays owed.
``poll`` believes a 404 only once the VM is ``read_settle_s`` old and ``RETRIES + 1`` GETs in a
row say so (ARM's reads are eventually consistent), and reads a ``Failed`` VM's power state
before calling it gone. ``list_owned`` is every VM of the resource group tagged
``ephemerid-job``, each Handle with the VM's ``ephemerid-deadline`` (the reaper deletes a VM past
it; the VM deletes itself then too, see ``vm_body``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ephemerid import __version__
from ephemerid.azure import clients
from ephemerid.azure.clients import RETRY_AFTER_CAP_S
from ephemerid.azure.compute import (
    RETRIES,
    TAG_DEADLINE,
    TAG_JOB,
    compute_name,
    deadline_margin_s,
    read_deadline,
    retry_delays,
    runner_env,
    stop_margin_s,
)
from ephemerid.azure.errors import describe, request_method, retry_after_s, transient
from ephemerid.compute import ComputeStatus, Handle, check_one_machine
from ephemerid.compute.prices import PriceTable
from ephemerid.compute.vm_body import (
    ENV_FILE,
    UNIT_FILE,
    VENV,
    Deadline,
    Placement,
    VmBody,
    placements,
    throwaway_public_key,
)
from ephemerid.compute.vm_state import (
    BUSY,
    capacity_code,
    created_at,
    handle_data,
    no_capacity,
    provisioning_state,
    requeue,
    vm_status,
)
from ephemerid.envs.registry import ENV_CLIENT_ID, ENV_REGISTRY, check_pullable
from ephemerid.errors import (
    BadInput,
    CapacityUnavailable,
    ComputeError,
    SpecError,
)
from ephemerid.record import JobRecord, utcnow
from ephemerid.settings import AzureVmSettings, Settings
from ephemerid.spec import JobSpec

__all__ = [
    "ENV_FILE",
    "TAG_DEADLINE",
    "TAG_JOB",
    "UNIT_FILE",
    "VENV",
    "AzureVmCompute",
    "capacity_code",
]
log = logging.getLogger("ephemerid")

# an Azure VM size: Standard_NC4as_T4_v3, Standard_ND96asr_v4, Basic_A1
VM_SIZE = re.compile(r"^(Standard|Basic)_[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")


def connect(config: AzureVmSettings) -> Any:
    """The real ComputeManagementClient: Azure with DefaultAzureCredential, or the simulator."""
    return clients.compute_client(config.subscription_id, config.arm_endpoint)


class AzureVmCompute:
    name = "azure-vm"

    def __init__(
        self,
        client: Any,
        config: AzureVmSettings,
        artifacts_uri: str,
        *,
        prices: PriceTable | None = None,
        timeout_s: float = 600.0,
        deadline_margin_s: float = 900.0,
        stop_margin_s: float = 130.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.vms = client, client.virtual_machines
        self.config, self.group = config, config.resource_group
        self.artifacts_uri = artifacts_uri
        self.prices = prices or PriceTable.load()
        self.timeout_s, self.deadline_margin_s = timeout_s, deadline_margin_s
        self.read_settle_s = config.read_settle_s
        self.stop_margin_s = min(stop_margin_s, deadline_margin_s)
        self.package = config.runner_package or f"ephemerid[azure]=={__version__}"
        self._sleep = sleep
        self._ssh_key = config.ssh_public_key
        if len(config.image.split(":")) != 4:
            raise BadInput(
                f"EPHEMERID_VM_IMAGE '{config.image}': write publisher:offer:sku:version"
            )
        if artifacts_uri.startswith("az://") and not config.blob_service_uri:
            raise BadInput(
                "azure-vm: the VMs' runner reaches the bucket with their identity: set "
                "EPHEMERID_STORAGE__accountName or EPHEMERID_STORAGE__blobServiceUri"
            )

    @classmethod
    def from_settings(cls, settings: Settings, artifacts_uri: str) -> AzureVmCompute:
        if settings.azure_vm is None:
            raise BadInput("the azure-vm backend is not configured: see docs/azure-vm.md")
        return cls(
            connect(settings.azure_vm),
            settings.azure_vm,
            artifacts_uri,
            prices=PriceTable.load(settings.price_table),
            timeout_s=settings.provision_timeout_s,
            deadline_margin_s=deadline_margin_s(settings),
            stop_margin_s=stop_margin_s(settings),
        )

    def close(self) -> None:
        self.client.close()

    def check(self, spec: JobSpec) -> None:
        """One VM per job, of a size Azure names (``Standard_NC4as_T4_v3``)."""
        check_one_machine(self.name, spec)
        bad = [sku for sku in spec.compute.skus if not VM_SIZE.match(sku)]
        if bad:
            raise SpecError(
                f"compute.skus: {', '.join(repr(s) for s in bad)} is not an Azure VM size name: "
                "write it as Azure does, e.g. Standard_NC4as_T4_v3"
            )
        if spec.environment is not None and spec.environment.image:
            check_pullable(spec.environment.image, self.config.registry)

    # -- the four verbs ----------------------------------------------------------------------

    def provision(self, job: JobRecord) -> Handle:
        name = compute_name(self.name, "a VM", job.id, job.evictions)
        found = self._find(name, job)
        if found is not None and provisioning_state(found) in (*BUSY, "Succeeded"):
            log.info("azure-vm: job %s already has VM %s: using it", job.id, name)
            return self._handle(job.id, self._wait_created(name, found, job))
        if found is not None:
            self._clear(name)
        attempts = []
        for placement in placements(job.spec.compute, self.config.regions, self.config.default_sku):
            vm, refused = self._place(job, name, placement)
            if vm is not None:
                return self._handle(job.id, vm)
            attempts.append(f"{placement}: {refused}")
        raise no_capacity(job, self.config, attempts)

    def poll(self, handle: Handle) -> ComputeStatus:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        name = handle.data.get("vm")
        if not name:
            return ComputeStatus.GONE
        try:
            vm = self.vms.get(self.group, name, expand="instanceView")
        except ResourceNotFoundError:
            return self._confirm_gone(handle, name)
        except AzureError as exc:  # unknown is not gone: the heartbeat decides
            log.warning("azure-vm: cannot read VM %s now: %s", name, describe(exc))
            return ComputeStatus.RUNNING
        return vm_status(vm)

    def teardown(self, handle: Handle) -> bool:
        """Delete the job's VM (or every VM tagged with the job) and confirm each is gone."""
        names = [handle.data["vm"]] if handle.data.get("vm") else self._names_of(handle.job_id)
        confirmed = [self._delete(name) for name in names]
        return all(confirmed)

    def list_owned(self) -> list[Handle]:
        return [self._handle(vm.tags[TAG_JOB], vm) for vm in self._owned()]

    # -- ARM ---------------------------------------------------------------------------------

    def _find(self, name: str, job: JobRecord | None = None) -> Any | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self.vms.get(self.group, name)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            if job is not None and transient(exc):
                raise requeue(job, self.config, f"reading VM {name}", exc) from exc
            raise ComputeError(f"azure-vm: cannot read VM {name}: {describe(exc)}") from exc

    def _place(self, job: JobRecord, name: str, placement: Placement) -> tuple[Any, str]:
        """Create the VM at ``placement``: (the VM, '') or (None, why it was refused).

        A capacity or quota refusal is final here; a transient failure is tried again, at most
        ``RETRIES`` times (a retried PUT of the same name is the same VM), then it is a refusal
        too. A Retry-After too long to wait in this call makes the job wait it out instead.
        """
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        last = ""
        for delay in retry_delays(self.config.arm_retry_s):
            self._sleep(delay)
            try:
                return self._create(job, name, placement), ""
            except AzureError as exc:
                code = capacity_code(exc)
                if code is not None:
                    log.info("azure-vm: job %s: %s refused: %s", job.id, placement, code)
                    self._clear(name)  # a refused VM can be left behind in state Failed
                    return None, code
                # the create's own GET of the VM, read too soon (a 404 on the PUT is definite)
                stale = isinstance(exc, ResourceNotFoundError) and request_method(exc) == "GET"
                if not stale and not transient(exc):
                    raise ComputeError(
                        f"azure-vm: creating VM {name} ({placement}) failed: {describe(exc)}"
                    ) from exc
                if (retry_after_s(exc) or 0.0) > RETRY_AFTER_CAP_S:
                    raise requeue(
                        job, self.config, f"creating VM {name} ({placement})", exc
                    ) from exc
                last = f"transient, tried {RETRIES + 1} times: {describe(exc)}"
                log.warning("azure-vm: job %s: creating %s: %s", job.id, placement, describe(exc))
        self._clear(name)  # a failed try can leave the VM behind, and the next place is elsewhere
        return None, last

    def _create(self, job: JobRecord, name: str, placement: Placement) -> Any:
        poller = self.vms.begin_create_or_update(self.group, name, self._body(job, name, placement))
        vm = poller.result(timeout=self.timeout_s)
        if not poller.done():
            raise ComputeError(f"azure-vm: VM {name} was not created within {self.timeout_s:.0f}s")
        return vm

    def _wait_created(self, name: str, vm: Any, job: JobRecord) -> Any:
        deadline = time.monotonic() + self.timeout_s
        while provisioning_state(vm) != "Succeeded":
            if provisioning_state(vm) not in BUSY or time.monotonic() > deadline:
                state = provisioning_state(vm)
                raise ComputeError(f"azure-vm: VM {name} ended {state} while being created")
            self._sleep(min(self.config.arm_retry_s, 5.0))
            vm = self._find(name, job)
            if vm is None:
                raise ComputeError(f"azure-vm: VM {name} was deleted while being created")
        return vm

    def _confirm_gone(self, handle: Handle, name: str) -> ComputeStatus:
        """A GET said 404. ARM's reads are eventually consistent, so a VM created moments ago
        may not show yet: gone only once it is ``read_settle_s`` old and every GET in a row of
        ``RETRIES + 1`` says so; a VM younger than that is STARTING (the next poll looks again)."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        created = created_at(handle.data)
        if created is not None and (utcnow() - created).total_seconds() < self.read_settle_s:
            log.info("azure-vm: VM %s created %s not found yet: not gone", name, created)
            return ComputeStatus.STARTING
        for delay in list(retry_delays(self.config.arm_retry_s))[1:]:
            self._sleep(delay)
            try:
                return vm_status(self.vms.get(self.group, name, expand="instanceView"))
            except ResourceNotFoundError:
                continue
            except AzureError as exc:
                log.warning("azure-vm: cannot read VM %s now: %s", name, describe(exc))
                return ComputeStatus.RUNNING
        return ComputeStatus.GONE

    def _clear(self, name: str) -> None:
        if not self._delete(name):
            raise CapacityUnavailable(
                f"VM {name} from an earlier try is still being deleted; trying again after it",
                retry_after_s=self.config.backoff_s,
            )

    def _delete(self, name: str) -> bool:
        """DELETE (forceDeletion=false), wait for it, and confirm with a GET answering 404."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        last = "not tried"
        for delay in retry_delays(self.config.arm_retry_s):
            self._sleep(delay)
            try:
                try:
                    poller = self.vms.begin_delete(self.group, name, force_deletion=False)
                    poller.result(timeout=self.timeout_s)
                    if not poller.done():
                        log.warning("azure-vm: VM %s still deleting; teardown stays owed", name)
                        return False
                except ResourceNotFoundError:
                    pass
                self.vms.get(self.group, name)
                last = "it still exists after its delete finished"
            except ResourceNotFoundError:
                return True
            except AzureError as exc:
                if not transient(exc):
                    raise ComputeError(
                        f"azure-vm: deleting VM {name} failed: {describe(exc)}"
                    ) from exc
                last = describe(exc)
                if (retry_after_s(exc) or 0.0) > RETRY_AFTER_CAP_S:
                    break  # ARM asks for longer than a call should wait: the reaper comes back
        log.warning("azure-vm: VM %s not confirmed deleted (%s); teardown stays owed", name, last)
        return False

    def _owned(self) -> list[Any]:
        from azure.core.exceptions import AzureError

        try:
            return [vm for vm in self.vms.list(self.group) if (vm.tags or {}).get(TAG_JOB)]
        except AzureError as exc:
            raise ComputeError(
                f"azure-vm: cannot list VMs in resource group '{self.group}': {describe(exc)}"
            ) from exc

    def _names_of(self, job_id: str) -> list[str]:
        return [str(vm.name) for vm in self._owned() if vm.tags[TAG_JOB] == job_id]

    # -- what is sent ------------------------------------------------------------------------

    def _handle(self, job_id: str, vm: Any) -> Handle:
        data = handle_data(vm)
        price = self.prices.per_hour(data["sku"], data["spot"])
        deadline = read_deadline((vm.tags or {}).get(TAG_DEADLINE))
        return Handle(self.name, job_id, data, data["sku"], data["spot"], price, deadline=deadline)

    def _runner_env(self, job_id: str) -> dict[str, str]:
        config = self.config
        env = runner_env(
            self.artifacts_uri, job_id, config.blob_service_uri, config.identity_client_id
        )
        env["EPHEMERID_SCHEDULED_EVENTS"] = config.scheduled_events_url
        if config.registry:  # which registry, and which identity, pulls an environment.image
            env[ENV_REGISTRY] = config.registry
            if config.identity_client_id:
                env[ENV_CLIENT_ID] = config.identity_client_id
        return env

    def _body(self, job: JobRecord, name: str, placement: Placement) -> dict[str, Any]:
        body = VmBody(self.config, self.package, self._public_key())
        return body.render(job.id, name, placement, self._runner_env(job.id), self._deadline(job))

    def _deadline(self, job: JobRecord) -> Deadline:
        """Max runtime plus the margins from now: the VM deletes itself then, and its runner
        stops the entrypoint ``stop_margin_s`` before (the grace, then time to upload)."""
        at = utcnow() + timedelta(seconds=job.spec.compute.max_runtime + self.deadline_margin_s)
        told = {
            "EPHEMERID_ARM_ENDPOINT": self.config.arm_endpoint,
            "EPHEMERID_VM_IDENTITY_CLIENT_ID": self.config.identity_client_id,
        }
        env = {key: value for key, value in told.items() if value}
        return Deadline(at, at - timedelta(seconds=self.stop_margin_s), env)

    def _public_key(self) -> str:
        """The configured SSH key, or a throwaway one made once (only when a VM is made)."""
        if not self._ssh_key:
            self._ssh_key = throwaway_public_key()
        return self._ssh_key

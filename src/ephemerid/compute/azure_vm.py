"""Azure VM compute: one GPU VM per job, rented through Azure Resource Manager, always given back.

``provision`` makes one VM per job, named from the job id (``eph-<job>-<attempt>``) so a retried
provision finds the VM it already started; what it sends (the VM body, its cloud-init) is
``ephemerid.compute.vm_body``.

Placement tries, in order, each spot choice (``spot: prefer`` tries spot first), each SKU of the
spec and each configured region or zone. Capacity and quota refusals move on to the next; when
none fits, ``CapacityUnavailable`` makes the job wait with backoff, and after ``max_wait`` a
``ComputeError`` fails it with every attempt listed. ``teardown`` DELETEs with
``forceDeletion=false``, waits on the long-running operation and returns True only when a GET
answers 404; transient ARM errors are retried with backoff, and an unconfirmed teardown returns
False so it stays owed. ``list_owned`` is every VM of the resource group tagged ``ephemerid-job``,
each Handle with the VM's ``ephemerid-deadline`` (the reaper deletes a VM past it; the VM
deletes itself then too, see ``vm_body``).
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
from ephemerid.azure.compute import (
    TAG_DEADLINE,
    TAG_JOB,
    compute_name,
    deadline_margin_s,
    read_deadline,
    retry_delays,
    runner_env,
    stop_margin_s,
)
from ephemerid.azure.errors import describe, error_tree, transient
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
from ephemerid.errors import (
    BadInput,
    CapacityUnavailable,
    ComputeError,
    EphemeridError,
    SpecError,
)
from ephemerid.record import JobRecord, utcnow
from ephemerid.settings import AzureVmSettings, Settings
from ephemerid.spec import JobSpec

__all__ = ["ENV_FILE", "TAG_DEADLINE", "TAG_JOB", "UNIT_FILE", "VENV", "AzureVmCompute"]
log = logging.getLogger("ephemerid")

# an Azure VM size: Standard_NC4as_T4_v3, Standard_ND96asr_v4, Basic_A1
VM_SIZE = re.compile(r"^(Standard|Basic)_[A-Za-z0-9]+(_[A-Za-z0-9]+)*$")
CAPACITY_CODES = frozenset(
    {
        "SkuNotAvailable",
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
    }
)
GONE_POWER = frozenset({"stopping", "stopped", "deallocating", "deallocated"})


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

    # -- the four verbs ----------------------------------------------------------------------

    def provision(self, job: JobRecord) -> Handle:
        from azure.core.exceptions import AzureError

        name = compute_name(self.name, "a VM", job.id, job.evictions)
        found = self._find(name)
        if found is not None and _state(found) in ("Creating", "Updating", "Succeeded"):
            log.info("azure-vm: job %s already has VM %s: using it", job.id, name)
            return self._handle(job.id, self._wait_created(name, found))
        if found is not None:
            self._clear(name)
        attempts = []
        for placement in placements(job.spec.compute, self.config.regions, self.config.default_sku):
            try:
                vm = self._create(job, name, placement)
            except AzureError as exc:
                code = capacity_code(exc)
                if code is None:
                    raise ComputeError(
                        f"azure-vm: creating VM {name} ({placement}) failed: {describe(exc)}"
                    ) from exc
                log.info("azure-vm: job %s: %s refused: %s", job.id, placement, code)
                attempts.append(f"{placement}: {code}")
                self._clear(name)  # a refused VM can be left behind in state Failed
                continue
            return self._handle(job.id, vm)
        raise self._no_capacity(job, attempts)

    def poll(self, handle: Handle) -> ComputeStatus:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        name = handle.data.get("vm")
        if not name:
            return ComputeStatus.GONE
        try:
            vm = self.vms.get(self.group, name, expand="instanceView")
        except ResourceNotFoundError:
            return ComputeStatus.GONE
        except AzureError as exc:  # unknown is not gone: the heartbeat decides
            log.warning("azure-vm: cannot read VM %s now: %s", name, describe(exc))
            return ComputeStatus.RUNNING
        statuses = getattr(vm.instance_view, "statuses", None) or []
        codes = [str(s.code) for s in statuses]
        power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), "")
        if _state(vm) in ("Failed", "Deleting") or power in GONE_POWER:
            return ComputeStatus.GONE
        if _state(vm) == "Creating" or power == "starting":
            return ComputeStatus.STARTING
        return ComputeStatus.RUNNING

    def teardown(self, handle: Handle) -> bool:
        """Delete the job's VM (or every VM tagged with the job) and confirm each is gone."""
        names = [handle.data["vm"]] if handle.data.get("vm") else self._names_of(handle.job_id)
        confirmed = [self._delete(name) for name in names]
        return all(confirmed)

    def list_owned(self) -> list[Handle]:
        return [self._handle(vm.tags[TAG_JOB], vm) for vm in self._owned()]

    # -- ARM ---------------------------------------------------------------------------------

    def _find(self, name: str) -> Any | None:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            return self.vms.get(self.group, name)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise ComputeError(f"azure-vm: cannot read VM {name}: {describe(exc)}") from exc

    def _create(self, job: JobRecord, name: str, placement: Placement) -> Any:
        poller = self.vms.begin_create_or_update(self.group, name, self._body(job, name, placement))
        vm = poller.result(timeout=self.timeout_s)
        if not poller.done():
            raise ComputeError(f"azure-vm: VM {name} was not created within {self.timeout_s:.0f}s")
        return vm

    def _wait_created(self, name: str, vm: Any) -> Any:
        deadline = time.monotonic() + self.timeout_s
        while _state(vm) != "Succeeded":
            if _state(vm) not in ("Creating", "Updating") or time.monotonic() > deadline:
                raise ComputeError(f"azure-vm: VM {name} ended {_state(vm)} while being created")
            self._sleep(min(self.config.arm_retry_s, 5.0))
            vm = self._find(name)
            if vm is None:
                raise ComputeError(f"azure-vm: VM {name} was deleted while being created")
        return vm

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
        data = _data(vm)
        price = self.prices.per_hour(data["sku"], data["spot"])
        deadline = read_deadline((vm.tags or {}).get(TAG_DEADLINE))
        return Handle(self.name, job_id, data, data["sku"], data["spot"], price, deadline=deadline)

    def _no_capacity(self, job: JobRecord, attempts: list[str]) -> EphemeridError:
        waited = (utcnow() - job.waiting_since).total_seconds() if job.waiting_since else 0.0
        refused = "; ".join(attempts)
        if waited >= self.config.max_wait_s:
            return ComputeError(
                f"no capacity after waiting {waited:.0f}s (max wait "
                f"{self.config.max_wait_s:.0f}s); every placement was refused: {refused}"
            )
        retry = min(max(self.config.backoff_s, waited / 2), max(self.config.backoff_s, 600.0))
        return CapacityUnavailable(
            f"waiting for capacity (next try in {retry:.0f}s); refused: {refused}",
            retry_after_s=retry,
        )

    def _runner_env(self, job_id: str) -> dict[str, str]:
        config = self.config
        env = runner_env(
            self.artifacts_uri, job_id, config.blob_service_uri, config.identity_client_id
        )
        return {**env, "EPHEMERID_SCHEDULED_EVENTS": config.scheduled_events_url}

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


def _state(vm: Any) -> str:
    return str(vm.provisioning_state or "")


def _data(vm: Any) -> dict[str, Any]:
    priority = getattr(vm.priority, "value", vm.priority)
    return {
        "vm": str(vm.name),
        "region": str(vm.location),
        "zone": str((vm.zones or [""])[0]),
        "sku": str(vm.hardware_profile.vm_size),
        "spot": str(priority) == "Spot",
    }


def capacity_code(exc: Exception) -> str | None:
    """The capacity or quota refusal in ``exc`` (also nested in ``details``), or None."""
    for error in error_tree(exc):
        code = str(error.get("code", ""))
        if code in CAPACITY_CODES:
            return code
        if code == "OperationNotAllowed" and "quota" in str(error.get("message", "")).lower():
            return "OperationNotAllowed (quota)"
    return None

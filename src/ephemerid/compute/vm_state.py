"""What azure-vm makes of ARM's answers: a VM's state, its handle data, a capacity refusal, and
how long a job waits when nothing can be placed or ARM asks it to come back later.

``vm_status`` is the one reading of a VM as ``poll`` reports it. ``provisioningState: Failed``
alone does not mean the VM is gone (Azure documents Failed as a state a running VM can be in and
recover from): only its power state says so. ``handle_data`` is what a Handle keeps of a VM,
including when it was created (its ``timeCreated``), so a 404 read soon after the create can be
told from a VM that is gone (see ``AzureVmCompute.poll``). Pure functions of the SDK's objects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ephemerid.azure.errors import describe, error_tree, retry_after_s
from ephemerid.compute import ComputeStatus
from ephemerid.errors import CapacityUnavailable, ComputeError, EphemeridError
from ephemerid.record import JobRecord, utcnow
from ephemerid.settings import AzureVmSettings

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
LIVE_POWER = frozenset({"starting", "running"})
BUSY = ("Creating", "Updating")


def provisioning_state(vm: Any) -> str:
    return str(vm.provisioning_state or "")


def power_state(vm: Any) -> str:
    """``running``, ``starting``, ``deallocated``… from the instance view; '' when it has none."""
    statuses = getattr(getattr(vm, "instance_view", None), "statuses", None) or []
    codes = [str(s.code) for s in statuses]
    return next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), "")


def vm_status(vm: Any) -> ComputeStatus:
    """A VM (read with its instance view) as ``poll`` reports it.

    Deleting, or powered off: gone. Failed: gone only when it is not running or starting as well.
    """
    state, power = provisioning_state(vm), power_state(vm)
    if state == "Deleting" or power in GONE_POWER:
        return ComputeStatus.GONE
    if state == "Failed" and power not in LIVE_POWER:
        return ComputeStatus.GONE
    if state == "Creating" or power == "starting":
        return ComputeStatus.STARTING
    return ComputeStatus.RUNNING


def handle_data(vm: Any) -> dict[str, Any]:
    """What a Handle keeps of a VM: its name, where it runs, its size, spot, when it was made."""
    priority = getattr(vm.priority, "value", vm.priority)
    created = getattr(vm, "time_created", None)
    return {
        "vm": str(vm.name),
        "region": str(vm.location),
        "zone": str((vm.zones or [""])[0]),
        "sku": str(vm.hardware_profile.vm_size),
        "spot": str(priority) == "Spot",
        "created": (created if isinstance(created, datetime) else utcnow()).isoformat(),
    }


def created_at(data: dict[str, Any]) -> datetime | None:
    """When a handle's VM was created; None for a handle that does not say (an older record)."""
    try:
        return datetime.fromisoformat(str(data["created"]))
    except (KeyError, ValueError):
        return None


def capacity_code(exc: Exception) -> str | None:
    """The capacity or quota refusal in ``exc`` (also nested in ``details``), or None."""
    for error in error_tree(exc):
        code = str(error.get("code", ""))
        if code in CAPACITY_CODES:
            return code
        if code == "OperationNotAllowed" and "quota" in str(error.get("message", "")).lower():
            return "OperationNotAllowed (quota)"
    return None


def no_capacity(job: JobRecord, config: AzureVmSettings, attempts: list[str]) -> EphemeridError:
    """Every placement was refused: wait, backing off as the wait grows; after ``max_wait``, fail
    listing every refusal."""
    waited = _waited(job)
    refused = "; ".join(attempts)
    if waited >= config.max_wait_s:
        return ComputeError(
            f"no capacity after waiting {waited:.0f}s (max wait "
            f"{config.max_wait_s:.0f}s); every placement was refused: {refused}"
        )
    retry = min(max(config.backoff_s, waited / 2), max(config.backoff_s, 600.0))
    return CapacityUnavailable(
        f"waiting for capacity (next try in {retry:.0f}s); refused: {refused}",
        retry_after_s=retry,
    )


def requeue(job: JobRecord, config: AzureVmSettings, what: str, exc: Exception) -> EphemeridError:
    """ARM is throttling or failing now: the job waits (its Retry-After, at least the backoff)
    instead of the call holding on; after ``max_wait`` it fails."""
    waited = _waited(job)
    if waited >= config.max_wait_s:
        return ComputeError(
            f"azure-vm: {what}: ARM still refuses after waiting {waited:.0f}s: {describe(exc)}"
        )
    retry = max(retry_after_s(exc) or 0.0, config.backoff_s)
    return CapacityUnavailable(
        f"waiting for ARM (next try in {retry:.0f}s): {what}: {describe(exc)}",
        retry_after_s=retry,
    )


def _waited(job: JobRecord) -> float:
    return (utcnow() - job.waiting_since).total_seconds() if job.waiting_since else 0.0

"""ComputeBackend: the four verbs every way of renting compute speaks.

``provision`` starts the runner for one job on fresh compute and returns a Handle; ``poll`` says
whether that compute is still there; ``teardown`` gives it back and returns True only once the
end is confirmed; ``list_owned`` finds every piece of compute this backend holds, so the reaper
can give back what no job owns any more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from ephemerid.errors import BadInput, SpecError
from ephemerid.record import JobRecord
from ephemerid.spec import JobSpec

if TYPE_CHECKING:
    from ephemerid.artifacts import ArtifactStore
    from ephemerid.settings import Settings


class ComputeStatus(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    GONE = "gone"
    # the platform gave the compute up before the job ran, for want of capacity or quota: not
    # the job's failure; it is placed again (the backend's provision decides when)
    UNPLACED = "unplaced"


@dataclass(frozen=True)
class Handle:
    """What a backend needs to find the compute again (``data``, stored with the job).

    ``sku``, ``spot`` and ``price_per_hour`` (USD, None if unknown) are what the job pays for;
    ``billed_tail_s`` is how long the compute stays billed after it is released (an Azure ML
    cluster's nodes idle that long before they scale down). ``deadline``, where the compute
    carries one (azure-vm's ``ephemerid-deadline`` tag): past it, the compute is overdue whatever
    its job's record says, and the reaper gives it back.
    """

    backend: str
    job_id: str
    data: dict[str, Any] = field(default_factory=dict)
    sku: str = ""
    spot: bool = False
    price_per_hour: float | None = None
    billed_tail_s: float = 0.0
    deadline: datetime | None = None


class ComputeBackend(Protocol):
    name: str

    def check(self, spec: JobSpec) -> None:
        """Refuse (SpecError) what this backend cannot run, before anything is stored or rented."""

    def provision(self, job: JobRecord) -> Handle:
        """Start the runner for ``job``. CapacityUnavailable when nothing can be placed now.

        Idempotent per job id: a retried provision finds what it started.
        """

    def poll(self, handle: Handle) -> ComputeStatus: ...

    def teardown(self, handle: Handle) -> bool:
        """Give the compute back; True once it is confirmed gone, False if still owed."""

    def list_owned(self) -> list[Handle]: ...

    def close(self) -> None:
        """Let go of connections (an ARM client); the compute itself is not touched."""


def check_one_machine(backend: str, spec: JobSpec) -> None:
    """Refuse a multi-node job on a backend that runs each job on one machine."""
    nodes = spec.compute.nodes
    if nodes > 1:
        multi = ", ".join(name for name, adapter in sorted(ADAPTERS.items()) if adapter.multi_node)
        raise SpecError(
            f"compute.nodes: {nodes} nodes need a multi-node backend ({multi}); "
            f"'{backend}' runs each job on one machine: set compute.backend: azure-ml, or nodes: 1"
        )


@dataclass(frozen=True)
class Adapter:
    """One way of renting compute: how to build it from settings, and whether it is set up.

    ``multi_node``: it can spread one job over several nodes (``compute.nodes > 1``).
    """

    build: Callable[[Settings, ArtifactStore], ComputeBackend]
    configured: Callable[[Settings], bool]
    multi_node: bool = False


def _local(settings: Settings, artifacts: ArtifactStore) -> ComputeBackend:
    from ephemerid.compute.local import LocalCompute

    return LocalCompute.from_settings(settings, artifacts)


def _azure_vm(settings: Settings, artifacts: ArtifactStore) -> ComputeBackend:
    from ephemerid.compute.azure_vm import AzureVmCompute

    return AzureVmCompute.from_settings(settings, artifacts.root_uri)


def _azure_ml(settings: Settings, artifacts: ArtifactStore) -> ComputeBackend:
    from ephemerid.compute.azure_ml import AzureMlCompute

    return AzureMlCompute.from_settings(settings, artifacts)


# name -> adapter; the names are what `compute.backend` and `--backend` accept. The local
# default is always there; a cloud backend only when its settings are (it needs no Azure else).
ADAPTERS: dict[str, Adapter] = {
    "local": Adapter(_local, lambda settings: True),
    "azure-vm": Adapter(_azure_vm, lambda settings: settings.azure_vm is not None),
    "azure-ml": Adapter(_azure_ml, lambda settings: settings.azure_ml is not None, True),
}


def build_backends(settings: Settings, artifacts: ArtifactStore) -> dict[str, ComputeBackend]:
    """Every configured backend, built once from ``settings`` by the composition root."""
    built: dict[str, ComputeBackend] = {}
    try:
        for name, adapter in ADAPTERS.items():
            if adapter.configured(settings):
                built[name] = adapter.build(settings, artifacts)
    except BaseException:
        for backend in built.values():
            backend.close()
        raise
    return built


def backend_names() -> list[str]:
    return sorted(ADAPTERS)


def check_backend(name: str) -> str:
    if name not in ADAPTERS:
        raise BadInput(
            f"compute backend '{name}' is unknown: use one of {', '.join(backend_names())}"
        )
    return name

"""Build the services once from settings and hand them down (no module-level clients)."""

from __future__ import annotations

from collections.abc import Callable

from ephemerid.artifacts import open_artifacts
from ephemerid.compute import ComputeBackend
from ephemerid.compute.local import LocalCompute
from ephemerid.record import JobRecord
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.store import open_store


def build_service(settings: Settings, notify: Callable[[JobRecord], None] | None = None) -> Service:
    storage = settings.storage.as_env()  # the connection, given to the adapters that need it
    artifacts = open_artifacts(settings.artifacts_url, storage)
    backends: dict[str, ComputeBackend] = {
        "local": LocalCompute(
            settings.home / "compute",
            artifacts.root_uri,
            slots=settings.local_slots,
            grace_s=settings.grace_s,
        )
    }
    if settings.azure_vm is not None:  # only when configured: the local default needs no Azure
        from ephemerid.compute.azure_vm import AzureVmCompute

        backends["azure-vm"] = AzureVmCompute.from_settings(settings, artifacts.root_uri)
    if settings.azure_ml is not None:
        from ephemerid.compute.azure_ml import AzureMlCompute

        backends["azure-ml"] = AzureMlCompute.from_settings(settings, artifacts)
    return Service(
        open_store(settings.store_url, storage),
        artifacts,
        backends,
        settings,
        notify or (lambda job: None),
    )


def load_rules(settings: Settings) -> Rules:
    return Rules.load(settings.rules_path)

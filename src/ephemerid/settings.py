"""Settings, read from ``EPHEMERID_*`` environment variables in one place.

Locally everything lives under ``EPHEMERID_HOME`` (default ``./.ephemerid``): the bucket folder,
the SQLite job store and the local compute's scratch space.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ephemerid.contract import GRACE_S, HEARTBEAT_S, LOG_LIMIT_BYTES
from ephemerid.errors import BadInput

PREFIX = "EPHEMERID_"
IMDS_SCHEDULED_EVENTS = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"
_AZURE_VM_REQUIRED = {
    "subscription_id": "EPHEMERID_AZURE_SUBSCRIPTION_ID",
    "resource_group": "EPHEMERID_COMPUTE_RESOURCE_GROUP",
    "subnet_id": "EPHEMERID_COMPUTE_SUBNET_ID",
    "regions": "EPHEMERID_COMPUTE_REGIONS",
    "identity_id": "EPHEMERID_VM_IDENTITY_ID",
}
_AZURE_VM_OPTIONAL = {
    "identity_client_id": "EPHEMERID_VM_IDENTITY_CLIENT_ID",
    "image": "EPHEMERID_VM_IMAGE",
    "default_sku": "EPHEMERID_VM_SKU",
    "python": "EPHEMERID_VM_PYTHON",
    "ssh_public_key": "EPHEMERID_VM_SSH_PUBLIC_KEY",
    "runner_package": "EPHEMERID_RUNNER_PACKAGE",
    "arm_endpoint": "EPHEMERID_ARM_ENDPOINT",
    "scheduled_events_url": "EPHEMERID_SCHEDULED_EVENTS_URL",
    "blob_service_uri": "EPHEMERID_STORAGE__blobServiceUri",
}
_AZURE_VM_NUMBERS = {
    "max_wait_s": "EPHEMERID_CAPACITY_MAX_WAIT_S",
    "backoff_s": "EPHEMERID_CAPACITY_BACKOFF_S",
    "arm_retry_s": "EPHEMERID_ARM_RETRY_S",
}


@dataclass(frozen=True)
class AzureVmSettings:
    """The azure-vm backend's settings; present only when its required settings are set.

    ``regions`` entries are ``region`` or ``region:zone``; a ``subnet_id`` containing
    ``{region}`` names one subnet per region. ``blob_service_uri`` is the only storage setting
    the VM is told: its runner reaches the bucket with the VM's managed identity, never a key.
    """

    subscription_id: str
    resource_group: str
    subnet_id: str
    regions: tuple[str, ...]
    identity_id: str
    identity_client_id: str = ""
    image: str = "microsoft-dsvm:ubuntu-hpc:2204:latest"
    default_sku: str = "Standard_NC4as_T4_v3"
    python: str = "python3"
    ssh_public_key: str = ""
    runner_package: str = ""  # default: ephemerid[azure]==<this version>
    arm_endpoint: str = ""  # a local ARM simulator (ephemerid.testing.arm); empty: Azure
    scheduled_events_url: str = IMDS_SCHEDULED_EVENTS
    blob_service_uri: str = ""
    max_wait_s: float = 3600.0
    backoff_s: float = 30.0
    arm_retry_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AzureVmSettings | None:
        values = _backend_values(
            env, "azure-vm", _AZURE_VM_REQUIRED, _AZURE_VM_OPTIONAL, _AZURE_VM_NUMBERS
        )
        if values is None:
            return None
        values["regions"] = tuple(r.strip() for r in values["regions"].split(",") if r.strip())
        return cls(**values)


_AZURE_ML_REQUIRED = {
    "subscription_id": "EPHEMERID_AZURE_SUBSCRIPTION_ID",
    "resource_group": "EPHEMERID_AML_RESOURCE_GROUP",
    "workspace": "EPHEMERID_AML_WORKSPACE",
    "cluster": "EPHEMERID_AML_CLUSTER",
    "environment": "EPHEMERID_AML_ENVIRONMENT",
}
_AZURE_ML_OPTIONAL = {
    "identity_client_id": "EPHEMERID_AML_IDENTITY_CLIENT_ID",
    "node_sku": "EPHEMERID_AML_SKU",
    "datastore": "EPHEMERID_AML_DATASTORE",
    "experiment": "EPHEMERID_AML_EXPERIMENT",
    "arm_endpoint": "EPHEMERID_ARM_ENDPOINT",
    "blob_service_uri": "EPHEMERID_STORAGE__blobServiceUri",
}
# a registered environment: name:version or name@label (after an optional azureml:), or an ARM id
_AML_ENVIRONMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*[:@][A-Za-z0-9_.-]+$"
    r"|^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/"
    r"(workspaces|registries)/[^/]+/environments/[^/]+/versions/[^/]+$",
    re.IGNORECASE,
)
_AML_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_AZURE_ML_NUMBERS = {
    "idle_s": "EPHEMERID_AML_IDLE_S",
    "finish_wait_s": "EPHEMERID_AML_FINISH_WAIT_S",
    "arm_retry_s": "EPHEMERID_ARM_RETRY_S",
}


@dataclass(frozen=True)
class AzureMlSettings:
    """The azure-ml backend's settings; present only when its workspace settings are set.

    ``cluster`` is an AmlCompute cluster made with ``min_instances=0``: ``node_sku``,
    ``low_priority`` and ``idle_s`` (its ``idle_time_before_scale_down``) describe it for the
    bill. ``environment`` is a registered Azure ML environment whose image has ephemerid
    installed (``name:version``, ``name@latest`` or an ARM id). ``datastore`` is the workspace
    datastore on the ``runs`` container: the job's folder and outputs are declared on it as
    ``uri_folder``, so Azure ML shows what each job read and wrote.
    """

    subscription_id: str
    resource_group: str
    workspace: str
    cluster: str
    environment: str
    identity_client_id: str = ""
    node_sku: str = "Standard_NC4as_T4_v3"
    low_priority: bool = False
    datastore: str = "ephemerid_runs"
    experiment: str = "ephemerid"
    arm_endpoint: str = ""  # a local ARM simulator (ephemerid.testing.arm); empty: Azure
    blob_service_uri: str = ""
    idle_s: float = 120.0
    finish_wait_s: float = 30.0  # a job whose result is written ends by itself: wait, then cancel
    arm_retry_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AzureMlSettings | None:
        values = _backend_values(
            env, "azure-ml", _AZURE_ML_REQUIRED, _AZURE_ML_OPTIONAL, _AZURE_ML_NUMBERS
        )
        if values is None:
            return None
        if not _AML_ENVIRONMENT.match(values["environment"].removeprefix("azureml:")):
            raise BadInput(
                f"EPHEMERID_AML_ENVIRONMENT='{values['environment']}' names no environment: "
                "write azureml:name:version, name@latest or the environment version's ARM id"
            )
        for name in ("datastore", "experiment"):
            if name in values and not _AML_NAME.match(values[name]):
                setting = _AZURE_ML_OPTIONAL[name]
                raise BadInput(
                    f"{setting}='{values[name]}' is not an Azure ML name: use letters, digits, "
                    "'_', '-' and '.'"
                )
        values["low_priority"] = _flag(env, "EPHEMERID_AML_LOW_PRIORITY")
        return cls(**values)


def _backend_values(
    env: Mapping[str, str],
    backend: str,
    required: Mapping[str, str],
    optional: Mapping[str, str],
    numbers: Mapping[str, str],
) -> dict[str, Any] | None:
    """A cloud backend's settings by field name; None when none of its own is set.

    The subscription alone configures nothing: both Azure backends read it. The runner is told
    the bucket's blob endpoint, which ``EPHEMERID_STORAGE__accountName`` implies when unset.
    """
    values: dict[str, Any] = {k: env[v] for k, v in required.items() if env.get(v)}
    if not set(values) - {"subscription_id"}:
        return None
    missing = [v for k, v in required.items() if k not in values]
    if missing:
        raise BadInput(f"the {backend} backend is half configured: set {', '.join(missing)}")
    values.update({k: env[v] for k, v in optional.items() if env.get(v)})
    if not values.get("blob_service_uri") and env.get("EPHEMERID_STORAGE__accountName"):
        account = env["EPHEMERID_STORAGE__accountName"]
        values["blob_service_uri"] = f"https://{account}.blob.core.windows.net"
    for name, setting in numbers.items():
        number = _number(env, setting, float, None)
        if number is not None and not (math.isfinite(number) and number >= 0):
            raise BadInput(f"setting {setting}='{env[setting]}' must be seconds, 0 or more")
        if number is not None:
            values[name] = number
    return values


@dataclass(frozen=True)
class Settings:
    home: Path
    store_url: str
    artifacts_url: str
    rules_path: Path
    backend: str = "local"
    local_slots: int | None = None
    heartbeat_s: float = HEARTBEAT_S
    heartbeat_timeout_s: float = 120.0
    provision_timeout_s: float = 600.0
    grace_s: float = GRACE_S
    log_limit_bytes: int = LOG_LIMIT_BYTES
    code_limit_bytes: int = 50 * 1024 * 1024
    eviction_retries: int = 3
    price_table: Path | None = None
    azure_vm: AzureVmSettings | None = None
    azure_ml: AzureMlSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        home = Path(overrides.pop("home", None) or env.get(f"{PREFIX}HOME", ".ephemerid"))
        home = home.resolve()
        values: dict[str, Any] = {
            "home": home,
            "store_url": env.get(f"{PREFIX}STORE", f"sqlite://{home / 'jobs.db'}"),
            "artifacts_url": env.get(f"{PREFIX}ARTIFACTS", f"file://{home / 'bucket'}"),
            "rules_path": Path(env.get(f"{PREFIX}RULES", "ephemerid.yaml")),
            "backend": env.get(f"{PREFIX}BACKEND", "local"),
            "azure_vm": AzureVmSettings.from_env(env),
            "azure_ml": AzureMlSettings.from_env(env),
        }
        if env.get(f"{PREFIX}PRICE_TABLE"):
            values["price_table"] = Path(env[f"{PREFIX}PRICE_TABLE"])
        numbers = {
            "local_slots": int,
            "heartbeat_s": float,
            "heartbeat_timeout_s": float,
            "provision_timeout_s": float,
            "grace_s": float,
            "log_limit_bytes": int,
            "code_limit_bytes": int,
            "eviction_retries": int,
        }
        for name, kind in numbers.items():
            values[name] = _number(env, PREFIX + name.upper(), kind, values.get(name))
        values = {k: v for k, v in values.items() if v is not None}
        return replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})


def _number(env: Mapping[str, str], setting: str, kind: type, default: Any) -> Any:
    raw = env.get(setting)
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise BadInput(f"setting {setting}='{raw}' is not a {kind.__name__}") from exc


def _flag(env: Mapping[str, str], setting: str) -> bool:
    raw = env.get(setting, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise BadInput(f"setting {setting}='{env[setting]}' is not true or false")

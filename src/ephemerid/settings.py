"""Settings, read from ``EPHEMERID_*`` environment variables in one place: ``Settings.from_env``.

Each setting is a field whose alias is its exact environment variable name, with its bounds; an
empty value counts as unset (the Bicep sets the azure-ml settings to '' when it makes no
workspace). A bad value is refused at start by one BadInput that names every bad setting, its
value and what to write, so a function app never starts on a NaN timeout or a negative grace.

Locally everything lives under ``EPHEMERID_HOME`` (default ``./.ephemerid``): the bucket folder,
the SQLite job store and the local compute's scratch space.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ephemerid.contract import (
    CHECKPOINT_UPLOAD_S,
    DISK_LIMIT_BYTES,
    GRACE_S,
    HEARTBEAT_S,
    LOG_LIMIT_BYTES,
    RESTARTS,
)
from ephemerid.errors import BadInput
from ephemerid.names import JOBS_QUEUE

PREFIX = "EPHEMERID_"
SUBSCRIPTION = "EPHEMERID_AZURE_SUBSCRIPTION_ID"  # both Azure backends read it: alone, no backend
IMDS_SCHEDULED_EVENTS = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


# The kinds of value a setting takes; each description is what the error tells the user to write.
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False, description="seconds, 0 or more")]
Interval = Annotated[float, Field(gt=0, allow_inf_nan=False, description="seconds, more than 0")]
Count = Annotated[int, Field(ge=0, description="a whole number, 0 or more")]
Bytes = Annotated[int, Field(ge=1, description="a whole number of bytes, 1 or more")]
Flag = Annotated[bool, BeforeValidator(_strip), Field(description="true or false")]


def _off_or_a_second(value: float) -> float:
    if 0 < value < 1:
        raise ValueError("must be 0 (only when the run ends) or from 1 to 86400 seconds")
    return value


CheckpointInterval = Annotated[
    float,
    Field(ge=0, le=86400, allow_inf_nan=False, description="seconds, 0 (off) or 1 to 86400"),
    AfterValidator(_off_or_a_second),
]
Restarts = Annotated[int, Field(ge=0, le=10, description="a whole number from 0 to 10")]


def _no_query(value: str) -> str:
    if "?" in value:
        raise ValueError(
            "carries a query string (a SAS token?), which would travel to the compute: "
            "write the URL alone; ephemerid reaches storage with its identity or EPHEMERID_STORAGE"
        )
    return value


# A storage URL: its query string is refused (the error shows the value without it).
Url = Annotated[str, AfterValidator(_no_query)]


class EnvMapping(PydanticBaseSettingsSource):
    """A settings source over an explicit mapping (``os.environ`` or a test's dict).

    It reads each field by its alias, the exact environment variable name; fields without an
    alias are no settings. An empty value counts as unset.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if not field.alias:  # a part of the settings (a backend's), not a setting
            return None, field_name, False
        return self.env.get(field.alias) or None, field.alias, False

    def __call__(self) -> dict[str, Any]:
        found = (self.get_field_value(f, n) for n, f in self.settings_cls.model_fields.items())
        return {name: value for value, name, _ in found if value is not None}


class _Settings(BaseSettings):
    """Settings read only through ``EnvMapping``: a model built directly reads no environment."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, case_sensitive=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def setting(cls, field: str) -> str:
        """The environment variable that sets ``field`` (the field's name if it has none)."""
        info = cls.model_fields.get(field)
        return info.alias if info is not None and info.alias else field

    @classmethod
    def required_settings(cls) -> list[str]:
        """The settings that have no default, in the order the model declares them."""
        return [f.alias for f in cls.model_fields.values() if f.is_required() and f.alias]


class StorageSettings(_Settings):
    """The ``EPHEMERID_STORAGE`` connection, as Azure Functions names it (azure/connection.py).

    A connection string (local, Azurite) or identity-based settings; the string is a secret:
    no repr, log or dump shows it.
    """

    connection_string: SecretStr | None = Field(None, alias="EPHEMERID_STORAGE")
    account_name: str = Field("", alias="EPHEMERID_STORAGE__accountName")
    blob_service_uri: Url = Field("", alias="EPHEMERID_STORAGE__blobServiceUri")
    queue_service_uri: Url = Field("", alias="EPHEMERID_STORAGE__queueServiceUri")
    table_service_uri: Url = Field("", alias="EPHEMERID_STORAGE__tableServiceUri")
    credential: str = Field("", alias="EPHEMERID_STORAGE__credential")
    client_id: str = Field("", alias="EPHEMERID_STORAGE__clientId")

    def as_env(self) -> dict[str, str]:
        """The connection's settings by name, as ``open_store`` and ``open_artifacts`` take them."""
        values = {self.setting(k): v for k, v in self if isinstance(v, str) and v}
        if self.connection_string is not None:
            values[self.setting("connection_string")] = self.connection_string.get_secret_value()
        return values

    @property
    def blob_endpoint(self) -> str:
        """The bucket's blob endpoint, which the account name implies when it is not set."""
        if self.blob_service_uri or not self.account_name:
            return self.blob_service_uri
        return f"https://{self.account_name}.blob.core.windows.net"


class AzureVmSettings(_Settings):
    """The azure-vm backend's settings; present only when its required settings are set.

    ``regions`` entries are ``region`` or ``region:zone``; a ``subnet_id`` containing
    ``{region}`` names one subnet per region. ``blob_service_uri`` is the only storage setting
    the VM is told: its runner reaches the bucket with the VM's managed identity, never a key.
    """

    subscription_id: str = Field(alias="EPHEMERID_AZURE_SUBSCRIPTION_ID")
    resource_group: str = Field(alias="EPHEMERID_COMPUTE_RESOURCE_GROUP")
    subnet_id: str = Field(alias="EPHEMERID_COMPUTE_SUBNET_ID")
    regions: tuple[str, ...] = Field(alias="EPHEMERID_COMPUTE_REGIONS")
    identity_id: str = Field(alias="EPHEMERID_VM_IDENTITY_ID")
    identity_client_id: str = Field("", alias="EPHEMERID_VM_IDENTITY_CLIENT_ID")
    image: str = Field("microsoft-dsvm:ubuntu-hpc:2204:latest", alias="EPHEMERID_VM_IMAGE")
    default_sku: str = Field("Standard_NC4as_T4_v3", alias="EPHEMERID_VM_SKU")
    python: str = Field("python3", alias="EPHEMERID_VM_PYTHON")
    ssh_public_key: str = Field("", alias="EPHEMERID_VM_SSH_PUBLIC_KEY")
    # the infra's container registry (login server): environment.image pulls with the VM identity
    registry: str = Field("", alias="EPHEMERID_VM_REGISTRY", pattern=r"^([a-z0-9.-]+(:[0-9]+)?)?$")
    # default: ephemerid[azure]==<this version>
    runner_package: str = Field("", alias="EPHEMERID_RUNNER_PACKAGE")
    # a local ARM simulator (ephemerid.testing.arm); empty: Azure
    arm_endpoint: str = Field("", alias="EPHEMERID_ARM_ENDPOINT")
    scheduled_events_url: str = Field(IMDS_SCHEDULED_EVENTS, alias="EPHEMERID_SCHEDULED_EVENTS_URL")
    blob_service_uri: Url = Field("", alias="EPHEMERID_STORAGE__blobServiceUri")
    max_wait_s: Seconds = Field(3600.0, alias="EPHEMERID_CAPACITY_MAX_WAIT_S")
    backoff_s: Seconds = Field(30.0, alias="EPHEMERID_CAPACITY_BACKOFF_S")
    arm_retry_s: Seconds = Field(2.0, alias="EPHEMERID_ARM_RETRY_S")
    # a VM younger than this that a GET says is not there may be a stale read: not yet gone
    read_settle_s: Seconds = Field(120.0, alias="EPHEMERID_ARM_READ_SETTLE_S")

    @field_validator("regions", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(r.strip() for r in value.split(",") if r.strip())
        return value


# a registered environment: name:version or name@label (after an optional azureml:), or an ARM id
_AML_ENVIRONMENT = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*[:@][A-Za-z0-9_.-]+$"
    r"|^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices/"
    r"(workspaces|registries)/[^/]+/environments/[^/]+/versions/[^/]+$",
    re.IGNORECASE,
)
_AML_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")


class AzureMlSettings(_Settings):
    """The azure-ml backend's settings; present only when its workspace settings are set.

    ``cluster`` is an AmlCompute cluster made with ``min_instances=0``: ``node_sku``,
    ``low_priority`` and ``idle_s`` (its ``idle_time_before_scale_down``) describe it for the
    bill. ``environment`` is a registered Azure ML environment whose image has ephemerid
    installed (``name:version``, ``name@latest`` or an ARM id); empty, ephemerid registers its
    own (``ephemerid-runner``, versioned by its content: ``conda_file`` and ``image`` replace
    its definition). ``datastore`` is the workspace
    datastore on the ``runs`` container: the job's folder and outputs are declared on it as
    ``uri_folder``, so Azure ML shows what each job read and wrote.
    """

    subscription_id: str = Field(alias="EPHEMERID_AZURE_SUBSCRIPTION_ID")
    resource_group: str = Field(alias="EPHEMERID_AML_RESOURCE_GROUP")
    workspace: str = Field(alias="EPHEMERID_AML_WORKSPACE")
    cluster: str = Field(alias="EPHEMERID_AML_CLUSTER")
    # empty: ephemerid's own runner environment, versioned by its content and registered by it
    environment: str = Field("", alias="EPHEMERID_AML_ENVIRONMENT")
    conda_file: str = Field("", alias="EPHEMERID_AML_CONDA_FILE")
    image: str = Field("", alias="EPHEMERID_AML_IMAGE")
    identity_client_id: str = Field("", alias="EPHEMERID_AML_IDENTITY_CLIENT_ID")
    node_sku: str = Field("Standard_NC4as_T4_v3", alias="EPHEMERID_AML_SKU")
    low_priority: Flag = Field(False, alias="EPHEMERID_AML_LOW_PRIORITY")
    datastore: str = Field("ephemerid_runs", alias="EPHEMERID_AML_DATASTORE")
    experiment: str = Field("ephemerid", alias="EPHEMERID_AML_EXPERIMENT")
    # a local ARM simulator (ephemerid.testing.arm); empty: Azure
    arm_endpoint: str = Field("", alias="EPHEMERID_ARM_ENDPOINT")
    blob_service_uri: Url = Field("", alias="EPHEMERID_STORAGE__blobServiceUri")
    idle_s: Seconds = Field(120.0, alias="EPHEMERID_AML_IDLE_S")
    # a job whose result is written ends by itself: wait, then cancel
    finish_wait_s: Seconds = Field(30.0, alias="EPHEMERID_AML_FINISH_WAIT_S")
    # how long a teardown reads a cancelled job before it leaves the confirmation to the reaper
    cancel_wait_s: Seconds = Field(5.0, alias="EPHEMERID_AML_CANCEL_WAIT_S")
    # a job Azure ML failed for want of quota is submitted again after a backoff, this long
    max_wait_s: Seconds = Field(3600.0, alias="EPHEMERID_CAPACITY_MAX_WAIT_S")
    backoff_s: Seconds = Field(30.0, alias="EPHEMERID_CAPACITY_BACKOFF_S")
    arm_retry_s: Seconds = Field(2.0, alias="EPHEMERID_ARM_RETRY_S")

    @field_validator("environment")
    @classmethod
    def _registered_environment(cls, value: str) -> str:
        if value and not _AML_ENVIRONMENT.match(value.removeprefix("azureml:")):
            raise ValueError(
                "names no environment: write azureml:name:version, name@latest or the "
                "environment version's ARM id"
            )
        return value

    @field_validator("datastore", "experiment")
    @classmethod
    def _azure_ml_name(cls, value: str) -> str:
        if not _AML_NAME.match(value):
            raise ValueError("is not an Azure ML name: use letters, digits, '_', '-' and '.'")
        return value


class Settings(_Settings):
    """Everything ephemerid is told at start; ``from_env`` reads it (tests pass a dict)."""

    home: Path = Field(alias="EPHEMERID_HOME")
    store_url: str = Field(alias="EPHEMERID_STORE")
    artifacts_url: Url = Field(alias="EPHEMERID_ARTIFACTS")
    rules_path: Path = Field(Path("ephemerid.yaml"), alias="EPHEMERID_RULES")
    backend: str = Field("local", alias="EPHEMERID_BACKEND")
    jobs_queue: str = Field(JOBS_QUEUE, alias="EPHEMERID_JOBS_QUEUE")
    local_slots: int | None = Field(
        None, alias="EPHEMERID_LOCAL_SLOTS", ge=1, description="a whole number of slots, 1 or more"
    )
    # how many GPUs local compute has (GPUs 0 to N-1; 0: none); unset, it looks for them
    local_gpus: int | None = Field(
        None, alias="EPHEMERID_LOCAL_GPUS", ge=0, description="a whole number of GPUs, 0 or more"
    )
    # how much a local job's work folder (scratch and outputs) may hold before it is stopped
    local_disk_limit_bytes: Bytes = Field(
        DISK_LIMIT_BYTES, alias="EPHEMERID_LOCAL_DISK_LIMIT_BYTES"
    )
    heartbeat_s: Interval = Field(HEARTBEAT_S, alias="EPHEMERID_HEARTBEAT_S")
    heartbeat_timeout_s: Seconds = Field(120.0, alias="EPHEMERID_HEARTBEAT_TIMEOUT_S")
    provision_timeout_s: Seconds = Field(600.0, alias="EPHEMERID_PROVISION_TIMEOUT_S")
    grace_s: Seconds = Field(GRACE_S, alias="EPHEMERID_GRACE_S")
    log_limit_bytes: Bytes = Field(LOG_LIMIT_BYTES, alias="EPHEMERID_LOG_LIMIT_BYTES")
    code_limit_bytes: Bytes = Field(50 * 1024 * 1024, alias="EPHEMERID_CODE_LIMIT_BYTES")
    eviction_retries: Count = Field(3, alias="EPHEMERID_EVICTION_RETRIES")
    # how often the runner uploads what changed in the job's checkpoint folder (0: only at its end)
    checkpoint_upload_s: CheckpointInterval = Field(
        CHECKPOINT_UPLOAD_S, alias="EPHEMERID_CHECKPOINT_UPLOAD_S"
    )
    # how many times a runner started again on the same compute (a reboot) reruns the job
    runner_restarts: Restarts = Field(RESTARTS, alias="EPHEMERID_RUNNER_RESTARTS")
    price_table: Path | None = Field(None, alias="EPHEMERID_PRICE_TABLE")
    # the local agent exits once nothing is open this long; its slow pass (reaper...) this often
    agent_idle_s: Seconds = Field(60.0, alias="EPHEMERID_AGENT_IDLE_S")
    agent_poll_s: Interval = Field(5.0, alias="EPHEMERID_AGENT_POLL_S")
    sweep_max_trials: int = Field(500, ge=1, le=10_000, alias="EPHEMERID_SWEEP_MAX_TRIALS")
    # each job an MLflow run there (ephemerid.mlflow_run); it may hold credentials: kept secret
    mlflow_tracking_uri: SecretStr = Field(SecretStr(""), alias="EPHEMERID_MLFLOW_TRACKING_URI")
    storage: StorageSettings = StorageSettings.model_validate({})  # frozen: one for every Settings
    azure_vm: AzureVmSettings | None = None
    azure_ml: AzureMlSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``env`` (default ``os.environ``); ``overrides`` by field name win.

        An override of None is no override. Every bad setting is reported in one BadInput.
        """
        env = os.environ if env is None else env
        changes = {cls.setting(k): v for k, v in overrides.items() if v is not None}
        problems: list[str] = []
        values: dict[str, Any] = {**EnvMapping(cls, env)(), **changes}
        home = Path(values.get(cls.setting("home")) or ".ephemerid").resolve()
        values[cls.setting("home")] = home
        values.setdefault(cls.setting("store_url"), f"sqlite://{home / 'jobs.db'}")
        values.setdefault(cls.setting("artifacts_url"), f"file://{home / 'bucket'}")
        storage = _validated(StorageSettings, EnvMapping(StorageSettings, env)(), problems)
        storage = storage or StorageSettings.model_validate({})
        values.setdefault("storage", storage)
        values.setdefault("azure_vm", _backend(AzureVmSettings, "azure-vm", env, storage, problems))
        values.setdefault("azure_ml", _backend(AzureMlSettings, "azure-ml", env, storage, problems))
        settings = _validated(cls, values, problems)
        if problems or settings is None:
            raise BadInput(_summary(problems))
        return settings


M = TypeVar("M", bound=_Settings)


def _backend(
    model: type[M], name: str, env: Mapping[str, str], storage: StorageSettings, problems: list[str]
) -> M | None:
    """A cloud backend's settings; None when none of its own is set, and never half of them."""
    values = EnvMapping(model, env)()
    required = model.required_settings()
    if not set(values) & set(required) - {SUBSCRIPTION}:
        return None
    missing = [s for s in required if s not in values]
    if missing:
        problems.append(f"the {name} backend is half configured: set {', '.join(missing)}")
        return None
    if storage.blob_endpoint:  # the runner is told the bucket's blob endpoint
        values.setdefault(model.setting("blob_service_uri"), storage.blob_endpoint)
    return _validated(model, values, problems)


def _validated(model: type[M], values: Mapping[str, Any], problems: list[str]) -> M | None:
    try:
        return model(**values)
    except ValidationError as exc:
        problems.extend(_explain(model, exc))
        return None


def _explain(model: type[_Settings], exc: ValidationError) -> Iterator[str]:
    """One line per bad setting: its name, its value and what to write instead."""
    fields = {**model.model_fields, **{f.alias: f for f in model.model_fields.values() if f.alias}}
    for error in exc.errors(include_url=False):
        key = str(error["loc"][0]) if error["loc"] else ""
        field = fields.get(key)
        name = field.alias if field is not None and field.alias else key
        what = field.description if field is not None else None
        problem = _problem(error, what)
        if what and field is not None and not field.is_required() and field.default is not None:
            problem += f" (default {field.default})"
        shown = str(error.get("input"))
        if "query string" in problem:  # never echo a SAS token
            shown = f"{shown.partition('?')[0]}?…"
        yield f"{name}='{shown}' {problem}"


def _problem(error: ErrorDetails, what: str | None) -> str:
    """What is wrong with a value, and what to write: ``what`` is the field's description."""
    kind = error["type"]
    if kind == "value_error":  # our own validators say it all
        return str(error["ctx"]["error"])
    if kind == "bool_parsing":
        return "is not true or false"
    if what and (kind.endswith("_parsing") or kind.endswith("_type")):
        return f"is not a number: write {what}"
    return f"must be {what}" if what else f"is refused: {error['msg']}"


def _summary(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"bad setting: {problems[0]}"
    return f"{len(problems)} bad settings: " + "; ".join(problems)

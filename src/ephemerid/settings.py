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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr
from pydantic_core import ErrorDetails, ValidationError

from ephemerid.backend_settings import AzureMlSettings, AzureVmSettings
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
from ephemerid.setting_kinds import (
    PREFIX,
    SUBSCRIPTION,
    Bytes,
    CheckpointInterval,
    Count,
    EnvMapping,
    Interval,
    Price,
    Restarts,
    Seconds,
    Url,
    _Settings,
)

__all__ = ["PREFIX", "AzureMlSettings", "AzureVmSettings", "Settings", "StorageSettings"]


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
    # what an hour of one local job's compute costs (0: its figure is shown as time, no price)
    local_price_per_hour: Price = Field(0.0, alias="EPHEMERID_LOCAL_PRICE_PER_HOUR")
    # a max_cost budget's allowance for the billed time around the run (boot, setup, idle)
    setup_allowance_s: Seconds = Field(300.0, alias="EPHEMERID_SETUP_ALLOWANCE_S")
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

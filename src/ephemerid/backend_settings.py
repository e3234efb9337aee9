"""The Azure backends' settings (azure-vm, azure-ml): each present only when its own are set."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from ephemerid.setting_kinds import IMDS_SCHEDULED_EVENTS, Flag, Seconds, Url, _Settings


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

"""The Azure SDK clients ephemerid uses, built in one place; each SDK is imported on first use.

Storage (blob service, queue, table) from a ``StorageConnection``: a connection string (local,
Azurite) or the identity-based form (``DefaultAzureCredential``). ARM compute
(``ComputeManagementClient``), Container Apps (``ContainerAppsAPIClient``) and Azure ML
(``MLClient``) for a subscription: in Azure with ``DefaultAzureCredential``, or, with ``endpoint``
set, the same real clients pointed at a local ARM simulator (``ephemerid.testing.arm``) with a
static token, on loopback hosts only.

``**options`` go to the SDK client as they are (``transport=``, ``retry_total=`` ...): tests fake
the transport, never the client. The ARM clients sleep a ``Retry-After`` of at most
``RETRY_AFTER_CAP_S`` inside a call (``capped_retry``); a longer one is raised to the caller.
A missing SDK is ``MissingExtra`` naming ``pip install 'ephemerid[azure]'``.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlparse

from ephemerid.azure.connection import StorageConnection
from ephemerid.errors import BadInput, require_extra

SIMULATOR_TOKEN = "arm-simulator-token"  # noqa: S105 - not a secret: only the simulator takes it
ARM_SCOPE = "https://management.azure.com/.default"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# The longest Retry-After the ARM client sleeps inside a call; a longer one is the caller's to wait
# out (azure-vm requeues the job with it) instead of holding a function execution that long.
RETRY_AFTER_CAP_S = 10.0
# The simulator answers in milliseconds: poll and back off at that pace, not Azure's.
SIMULATOR_PACE = {"polling_interval": 0.02, "retry_backoff_factor": 0.02, "retry_backoff_max": 0.2}


# -- Storage -----------------------------------------------------------------------------------


def blob_service(connection: StorageConnection, **options: Any) -> Any:
    require_extra("azure.storage.blob", "azure")
    from azure.storage.blob import BlobServiceClient

    return _storage_client(BlobServiceClient, connection, "blob", (), options)


def queue_client(connection: StorageConnection, queue: str, **options: Any) -> Any:
    require_extra("azure.storage.queue", "azure")
    from azure.storage.queue import QueueClient

    return _storage_client(QueueClient, connection, "queue", (queue,), options)


def table_client(connection: StorageConnection, table: str, **options: Any) -> Any:
    require_extra("azure.data.tables", "azure")
    from azure.data.tables import TableClient

    return _storage_client(TableClient, connection, "table", (table,), options)


def _storage_client(
    kind: Any, connection: StorageConnection, service: str, names: tuple[str, ...], options: Any
) -> Any:
    """One Storage client, from the connection string or by identity from the service's URI."""
    if connection.connection_string:
        return kind.from_connection_string(connection.connection_string, *names, **options)
    return kind(connection.uri(service), *names, credential=connection.credential(), **options)


# -- ARM and Azure ML ----------------------------------------------------------------------------


def compute_client(subscription_id: str, endpoint: str = "", **options: Any) -> Any:
    """The real ``ComputeManagementClient``: Azure, or the ARM simulator at ``endpoint``.

    azure-core refuses bearer tokens over plain http; for the simulator the authentication
    policy allows them for loopback hosts only, so the static token never leaves this machine.
    """
    require_extra("azure.mgmt.compute", "azure")
    from azure.mgmt.compute import ComputeManagementClient

    return _arm_client(ComputeManagementClient, subscription_id, endpoint, options)


def container_apps_client(subscription_id: str, endpoint: str = "", **options: Any) -> Any:
    """The real ``ContainerAppsAPIClient`` (azure-mgmt-appcontainers): Azure, or the simulator."""
    require_extra("azure.mgmt.appcontainers", "azure")
    from azure.mgmt.appcontainers import ContainerAppsAPIClient

    return _arm_client(ContainerAppsAPIClient, subscription_id, endpoint, options)


def _arm_client(kind: Any, subscription_id: str, endpoint: str, options: dict[str, Any]) -> Any:
    if not endpoint:
        options.setdefault("retry_policy", capped_retry(**options))
        return kind(_default_credential(), subscription_id, **options)
    check_loopback(endpoint)
    credential = StaticToken()
    options = {**SIMULATOR_PACE, **options}
    options.setdefault("retry_policy", capped_retry(**options))
    return kind(
        credential,
        subscription_id,
        base_url=endpoint,
        authentication_policy=_loopback_authentication(credential),
        **options,
    )


def _loopback_authentication(credential: Any) -> Any:
    """ARM's bearer-token policy, allowing plain http to loopback hosts (the simulator) only."""
    from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

    class LoopbackAuthentication(ARMChallengeAuthenticationPolicy):
        def on_request(self, request: Any) -> None:
            if is_loopback(request.http_request.url):
                request.context["enforce_https"] = False
            super().on_request(request)

    return LoopbackAuthentication(credential, ARM_SCOPE)


def capped_retry(cap_s: float = RETRY_AFTER_CAP_S, **options: Any) -> Any:
    """azure-core's ``RetryPolicy`` (``options``: ``retry_total=`` ...), except that an answer
    whose ``Retry-After`` asks for more than ``cap_s`` is not slept on and retried: it is returned
    as it is, so the call raises it (429 with its ``Retry-After``) and the caller decides."""
    from azure.core.pipeline.policies import RetryPolicy

    class CappedRetryPolicy(RetryPolicy):
        def is_retry(self, settings: Any, response: Any) -> bool:
            after = self.get_retry_after(response)
            if after is not None and after > cap_s:
                return False
            return bool(super().is_retry(settings, response))

    return CappedRetryPolicy(**options)


def ml_client(
    subscription_id: str, resource_group: str, workspace: str, endpoint: str = "", **options: Any
) -> Any:
    """The real ``azure.ai.ml.MLClient``: Azure, or the ARM simulator at ``endpoint``.

    MLClient takes its ARM endpoint from a cloud's metadata, so the simulator is registered as a
    cloud of its own (one name per endpoint); registering sets ``AZUREML_CURRENT_CLOUD`` in this
    process, which is put back as it was. Plain http makes the SDK's pipeline allow the bearer
    token without TLS. Telemetry and progress bars are off either way.
    """
    require_extra("azure.ai.ml", "azure")
    from azure.ai.ml import MLClient

    quiet: dict[str, Any] = {"enable_telemetry": False, "show_progress": False}
    if not endpoint:
        return MLClient(
            _default_credential(), subscription_id, resource_group, workspace, **quiet, **options
        )
    check_loopback(endpoint)
    metadata = {
        "azure_portal": endpoint,
        "resource_manager": endpoint,
        "active_directory": endpoint,
        "aml_resource_id": endpoint,
        "storage_endpoint": "core.windows.net",
        "registry_discovery_endpoint": endpoint,
    }
    pace = {k: v for k, v in SIMULATOR_PACE.items() if k != "retry_backoff_max"}
    before = os.environ.get("AZUREML_CURRENT_CLOUD")
    credential = StaticToken()
    # the workspace and run-history clients take this policy too: their calls carry no option
    # that allows the simulator's plain http otherwise
    pace["authentication_policy"] = _loopback_authentication(credential)
    try:
        return MLClient(
            credential,
            subscription_id,
            resource_group,
            workspace,
            cloud=f"ephemerid-simulator-{urlparse(endpoint).port}",
            cloud_metadata=metadata,
            **quiet,
            **{**pace, **options},
        )
    finally:
        if before is None:
            os.environ.pop("AZUREML_CURRENT_CLOUD", None)
        else:
            os.environ["AZUREML_CURRENT_CLOUD"] = before


def _default_credential() -> Any:
    require_extra("azure.identity", "azure")
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


# -- the simulator's credential ------------------------------------------------------------------


class StaticToken:
    """A TokenCredential (with ``get_token_info``) that always yields the simulator's token."""

    def __init__(self, token: str = SIMULATOR_TOKEN) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self.token, int(time.time()) + 3600)


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in LOOPBACK


def check_loopback(endpoint: str) -> None:
    if not is_loopback(endpoint):
        raise BadInput(
            f"EPHEMERID_ARM_ENDPOINT '{endpoint}' must be a loopback simulator URL "
            "(http://127.0.0.1:<port>); leave it empty for Azure"
        )

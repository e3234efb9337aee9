"""Storage connections the way Azure Functions names them.

A connection named ``EPHEMERID_STORAGE`` is either a connection string in that setting (local
development and Azurite), or identity-based settings under ``EPHEMERID_STORAGE__*``:
``accountName``, or ``blobServiceUri`` / ``queueServiceUri`` / ``tableServiceUri``, with
``credential=managedidentity`` and ``clientId`` for a user-assigned identity. In Azure no key is
needed: the identity-based form uses ``DefaultAzureCredential``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ephemerid.errors import BadInput, require_extra

DEFAULT_CONNECTION = "EPHEMERID_STORAGE"
SERVICES = ("blob", "queue", "table")


@dataclass(frozen=True)
class StorageConnection:
    name: str
    connection_string: str | None = None
    service_uris: tuple[tuple[str, str], ...] = ()
    client_id: str | None = None

    def uri(self, service: str) -> str:
        found = dict(self.service_uris).get(service)
        if not found:
            raise BadInput(
                f"connection '{self.name}' has no {service} endpoint: set "
                f"{self.name}__{service}ServiceUri or {self.name}__accountName"
            )
        return found

    def credential(self) -> Any:
        require_extra("azure.identity", "azure")
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential(managed_identity_client_id=self.client_id)


def storage_connection(env: Mapping[str, str], name: str = DEFAULT_CONNECTION) -> StorageConnection:
    """Read connection ``name`` from ``env``; BadInput naming the settings to set if absent."""
    if env.get(name):
        return StorageConnection(name, connection_string=env[name])
    account = env.get(f"{name}__accountName")
    uris = []
    for service in SERVICES:
        uri = env.get(f"{name}__{service}ServiceUri")
        if not uri and account:
            uri = f"https://{account}.{service}.core.windows.net"
        if uri:
            uris.append((service, uri.rstrip("/")))
    if not uris:
        raise BadInput(
            f"storage connection '{name}' is not set: set {name} to a connection string "
            f"(local, Azurite) or {name}__accountName (managed identity in Azure)"
        )
    return StorageConnection(name, service_uris=tuple(uris), client_id=env.get(f"{name}__clientId"))

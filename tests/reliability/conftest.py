"""Fixtures the reliability tests share."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ephemerid.azure.connection import storage_connection
from ephemerid.service import Service
from ephemerid.store.table import TableJobStore


@pytest.fixture
def table_service(azurite_connection: str, service: Service) -> Iterator[Service]:
    """The test's service with its jobs on Table Storage (Azurite), in a table of its own."""
    connection = storage_connection({"EPHEMERID_STORAGE": azurite_connection})
    store = TableJobStore(connection, f"t{uuid.uuid4().hex}")
    yield Service(store, service.artifacts, service.backends, service.settings)
    store.close()

"""BlobArtifactStore on Azurite: what only the Blob Storage bucket does (the contract is elsewhere).

Each upload records its SHA-256 in the blob's metadata, logs are append blobs, and the bucket is
the whole storage account: its root is plain ``az://``. A blob service that is busy or unreachable
is Unavailable, never an absent artifact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from artifacts.streams import MB
from ephemerid.artifacts import get_bytes, open_artifacts, put_bytes
from ephemerid.artifacts.blob import BLOCK, BlobArtifactStore
from ephemerid.azure.connection import storage_connection
from ephemerid.errors import AccessDenied, BadInput, NotFound, Unavailable
from outage import Outage


@pytest.fixture
def store(azurite_connection: str) -> Iterator[BlobArtifactStore]:
    opened = open_artifacts("az://", {"EPHEMERID_STORAGE": azurite_connection})
    assert isinstance(opened, BlobArtifactStore)
    for container in opened.client.list_containers():
        opened.client.delete_container(container.name)
    yield opened
    opened.client.close()


def test_the_sha256_of_a_write_is_kept_with_the_blob(store: BlobArtifactStore) -> None:
    data = os.urandom(MB)
    put_bytes(store, "runs/j/w.bin", data)

    stat = store.stat("runs/j/w.bin")
    (listed,) = store.list("runs/j/")

    assert stat is not None
    assert stat.sha256 == listed.sha256 == hashlib.sha256(data).hexdigest()
    properties = store.client.get_blob_client("runs", "j/w.bin").get_blob_properties()
    assert properties.metadata == {"sha256": hashlib.sha256(data).hexdigest()}


def test_a_container_is_made_on_first_write(store: BlobArtifactStore) -> None:
    put_bytes(store, "incoming/train/a.csv", b"a")

    assert [c.name for c in store.client.list_containers()] == ["incoming"]


def test_logs_are_append_blobs_readable_while_they_grow(store: BlobArtifactStore) -> None:
    store.append("runs/j/output.log", b"line 1\n")
    first = get_bytes(store, "runs/j/output.log")
    store.append("runs/j/output.log", b"line 2\n")

    properties = store.client.get_blob_client("runs", "j/output.log").get_blob_properties()
    assert properties.blob_type == "AppendBlob"
    assert first == b"line 1\n"
    assert get_bytes(store, "runs/j/output.log") == b"line 1\nline 2\n"


def test_an_append_larger_than_one_block_is_split(store: BlobArtifactStore) -> None:
    data = os.urandom(2 * BLOCK + 11)

    store.append("runs/j/output.log", data)

    assert get_bytes(store, "runs/j/output.log") == data


@pytest.mark.parametrize("key", ["My_Data/a.csv", "ab/a.csv"])
def test_a_container_name_azure_refuses_is_bad_input_naming_the_key(
    store: BlobArtifactStore, key: str
) -> None:
    with pytest.raises(BadInput, match=key):
        put_bytes(store, key, b"x")


def test_a_root_other_than_plain_az_is_refused(azurite_connection: str) -> None:
    with pytest.raises(BadInput, match="plain az://"):
        open_artifacts("az://bucket", {"EPHEMERID_STORAGE": azurite_connection})


def test_a_missing_storage_connection_is_bad_input_naming_the_settings_to_set() -> None:
    with pytest.raises(BadInput) as caught:
        open_artifacts("az://", {})

    assert "EPHEMERID_STORAGE " in str(caught.value)
    assert "EPHEMERID_STORAGE__accountName" in str(caught.value)


# -- a service that fails is not an artifact that is absent ---------------------------------------


@pytest.fixture
def outage() -> Outage:
    return Outage()


@pytest.fixture
def flaky(azurite_connection: str, outage: Outage) -> Iterator[BlobArtifactStore]:
    """A bucket whose transport answers what ``outage`` says while it lasts."""
    connection = storage_connection({"EPHEMERID_STORAGE": azurite_connection})
    opened = BlobArtifactStore(connection, **outage.client_options())
    yield opened
    opened.client.close()


def test_a_busy_blob_service_is_unavailable_for_reads_stats_lists_and_writes(
    flaky: BlobArtifactStore, outage: Outage
) -> None:
    put_bytes(flaky, "runs/j/result.json", b"{}")
    outage.answer(503)

    with pytest.raises(Unavailable, match=r"az://runs/j/result\.json"):
        get_bytes(flaky, "runs/j/result.json")
    with pytest.raises(Unavailable, match=r"az://runs/j/result\.json"):
        flaky.stat("runs/j/result.json")  # not None: absent is not what it said
    with pytest.raises(Unavailable, match="az://runs/j/"):
        list(flaky.list("runs/j/"))
    with pytest.raises(Unavailable, match=r"az://runs/j/other\.json"):
        put_bytes(flaky, "runs/j/other.json", b"{}")
    outage.end()
    assert get_bytes(flaky, "runs/j/result.json") == b"{}"


def test_a_reset_connection_is_unavailable_and_a_missing_blob_still_not_found(
    flaky: BlobArtifactStore, outage: Outage
) -> None:
    put_bytes(flaky, "runs/j/log.txt", b"x")

    with pytest.raises(NotFound, match="az://runs/j/absent"):
        get_bytes(flaky, "runs/j/absent")
    assert flaky.stat("runs/j/absent") is None
    outage.reset()
    with pytest.raises(Unavailable, match=r"az://runs/j/log\.txt"):
        flaky.append("runs/j/log.txt", b"y")


def test_a_refused_identity_is_access_denied_naming_the_role(
    flaky: BlobArtifactStore, outage: Outage
) -> None:
    put_bytes(flaky, "runs/j/result.json", b"{}")
    outage.answer(403, "AuthorizationPermissionMismatch")

    with pytest.raises(AccessDenied, match="Storage Blob Data Contributor"):
        get_bytes(flaky, "runs/j/result.json")

"""Azure Blob Storage as the bucket (``az://<container>/<path>``).

Uploads and downloads stream in blocks of ``BLOCK`` bytes, so a 1 GB input never needs 1 GB of
memory; each upload records its SHA-256 in the blob's metadata. Containers are created on first
write. Logs are append blobs, so the job's output can be read while the job runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Iterator
from typing import Any, BinaryIO

from ephemerid.artifacts import Stat, safe_key
from ephemerid.azure.connection import StorageConnection
from ephemerid.errors import BadInput, Conflict, EphemeridError, NotFound, require_extra

BLOCK = 4 * 1024 * 1024
SCHEME = "az://"


class BlobArtifactStore:
    root_uri = SCHEME

    def __init__(self, connection: StorageConnection) -> None:
        require_extra("azure.storage.blob", "azure")
        from azure.storage.blob import BlobServiceClient

        options: dict[str, Any] = {
            "max_block_size": BLOCK,
            "max_single_put_size": BLOCK,
            "max_single_get_size": BLOCK,
            "max_chunk_get_size": BLOCK,
        }
        if connection.connection_string:
            self.client = BlobServiceClient.from_connection_string(
                connection.connection_string, **options
            )
        else:
            self.client = BlobServiceClient(
                connection.uri("blob"), credential=connection.credential(), **options
            )
        self._containers: set[str] = set()

    def uri(self, key: str) -> str:
        return f"{SCHEME}{key}"

    def key_of(self, uri: str) -> str:
        if not uri.startswith(SCHEME):
            raise BadInput(f"'{uri}' is not in this artifact store: URIs start with {SCHEME}")
        return safe_key(uri[len(SCHEME) :], what="artifact URI")

    def _blob(self, key: str) -> Any:
        container, _, name = safe_key(key).partition("/")
        if not name:
            raise BadInput(f"'{key}' names a container, not a blob: write <container>/<path>")
        return self.client.get_blob_client(container, name)

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        blob = self._blob(key)
        try:
            if offset and offset >= blob.get_blob_properties().size:
                return io.BytesIO(b"")
            downloader = blob.download_blob(offset=offset or None)
        except ResourceNotFoundError as exc:
            raise NotFound(f"no artifact '{self.uri(key)}'") from exc
        except HttpResponseError as exc:
            raise EphemeridError(f"reading '{self.uri(key)}' failed: {exc.message}") from exc
        return io.BufferedReader(_Chunks(downloader.chunks()), BLOCK)

    def write(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> Stat:
        from azure.core.exceptions import ResourceExistsError

        blob = self._blob(key)
        self._ensure_container(blob.container_name)
        hashing = _Hashing(stream)
        try:
            blob.upload_blob(hashing, overwrite=not if_absent, max_concurrency=1)
        except ResourceExistsError as exc:
            raise Conflict(f"artifact '{self.uri(key)}' already exists") from exc
        blob.set_blob_metadata({"sha256": hashing.sha256.hexdigest()})
        props = blob.get_blob_properties()
        return Stat(key, props.size, props.etag.strip('"'), hashing.sha256.hexdigest())

    def append(self, key: str, data: bytes) -> None:
        from azure.core.exceptions import ResourceExistsError

        blob = self._blob(key)
        self._ensure_container(blob.container_name)
        with contextlib.suppress(ResourceExistsError):
            blob.create_append_blob(if_none_match="*")
        for start in range(0, len(data), BLOCK):
            blob.append_block(data[start : start + BLOCK])

    def stat(self, key: str) -> Stat | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self._blob(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return Stat(key, props.size, props.etag.strip('"'), (props.metadata or {}).get("sha256"))

    def list(self, prefix: str) -> Iterator[Stat]:
        from azure.core.exceptions import ResourceNotFoundError

        container, _, rest = prefix.partition("/")
        if not container:
            return
        client = self.client.get_container_client(container)
        try:
            for props in client.list_blobs(name_starts_with=rest or None, include=["metadata"]):
                key = f"{container}/{props.name}"
                if key.startswith(prefix):
                    sha = (props.metadata or {}).get("sha256")
                    yield Stat(key, props.size, props.etag.strip('"'), sha)
        except ResourceNotFoundError:
            return

    def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self._blob(key).delete_blob()

    def _ensure_container(self, name: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        if name in self._containers:
            return
        with contextlib.suppress(ResourceExistsError):
            self.client.create_container(name)
        self._containers.add(name)


class _Chunks(io.RawIOBase):
    """A readable stream over the downloader's chunk iterator (one block in memory at a time)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


class _Hashing(io.RawIOBase):
    """Hashes what the upload reads, so the SHA-256 costs no second pass."""

    def __init__(self, inner: BinaryIO) -> None:
        self._inner = inner
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.sha256.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

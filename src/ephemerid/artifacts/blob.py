"""Azure Blob Storage as the bucket (``az://<container>/<path>``).

Uploads and downloads stream in blocks of ``BLOCK`` bytes, so a 1 GB input never needs 1 GB of
memory; each upload records its SHA-256 in the blob's metadata. Containers are created on first
write. Logs are append blobs, so the job's output can be read while the job runs.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

from ephemerid.artifacts import Stat, check_container, safe_key, split_key
from ephemerid.azure.connection import StorageConnection
from ephemerid.errors import BadInput, Conflict, EphemeridError, NotFound, require_extra

BLOCK = 4 * 1024 * 1024
_LOST_RACE = ("InvalidBlockList", "ConditionNotMet", "BlobAlreadyExists")
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
        container, name = split_key(key)
        return self.client.get_blob_client(container, name)

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        if "/" not in key.strip("/"):
            raise NotFound(f"no artifact '{self.uri(key)}' (a container is not an artifact)")
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
        """One Put Blob when it fits a block; else staged blocks committed with the hash.

        Either way the SHA-256 lands in the same request that makes the content visible.
        """
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        blob = self._blob(key)
        self._ensure_container(blob.container_name)
        sha256 = hashlib.sha256()
        first = _read_block(stream)
        second = _read_block(stream) if len(first) == BLOCK else b""
        condition: dict[str, Any] = {"if_none_match": "*"} if if_absent else {}
        try:
            if not second:
                sha256.update(first)
                blob.upload_blob(
                    first, overwrite=not if_absent, metadata={"sha256": sha256.hexdigest()}
                )
            else:
                blocks = self._stage(blob, sha256, first, second, stream)
                blob.commit_block_list(blocks, metadata={"sha256": sha256.hexdigest()}, **condition)
        except ResourceExistsError as exc:
            raise Conflict(f"artifact '{self.uri(key)}' already exists") from exc
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) in _LOST_RACE:
                raise Conflict(
                    f"artifact '{self.uri(key)}' was written by another writer meanwhile"
                ) from exc
            raise EphemeridError(f"writing '{self.uri(key)}' failed: {exc.message}") from exc
        props = blob.get_blob_properties()
        return Stat(key, props.size, props.etag.strip('"'), sha256.hexdigest())

    @staticmethod
    def _stage(blob: Any, sha256: Any, *first: bytes | BinaryIO) -> list[Any]:
        from azure.storage.blob import BlobBlock

        *chunks, rest = first
        blocks: list[Any] = []
        while True:
            chunk = chunks.pop(0) if chunks else _read_block(rest)  # type: ignore[arg-type]
            if not chunk:
                return blocks
            sha256.update(chunk)
            block_id = base64.b64encode(uuid.uuid4().bytes).decode()
            blob.stage_block(block_id, chunk)
            blocks.append(BlobBlock(block_id=block_id))

    def append(self, key: str, data: bytes) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        blob = self._blob(key)
        self._ensure_container(blob.container_name)
        with contextlib.suppress(ResourceExistsError):
            blob.create_append_blob(if_none_match="*")
        try:
            for start in range(0, len(data), BLOCK):
                blob.append_block(data[start : start + BLOCK])
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) == "InvalidBlobType":
                raise Conflict(
                    f"cannot append to '{self.uri(key)}': it was written whole, not appended"
                ) from exc
            raise EphemeridError(f"appending to '{self.uri(key)}' failed: {exc.message}") from exc

    def stat(self, key: str) -> Stat | None:
        from azure.core.exceptions import ResourceNotFoundError

        if "/" not in key.strip("/"):
            return None  # a container is not an artifact
        try:
            props = self._blob(key).get_blob_properties()
        except ResourceNotFoundError:
            return None
        return Stat(key, props.size, props.etag.strip('"'), (props.metadata or {}).get("sha256"))

    def list(self, prefix: str) -> Iterator[Stat]:
        if prefix.strip("/"):
            safe_key(prefix.rstrip("/"), what="prefix")
        container, sep, rest = prefix.partition("/")
        if sep:
            check_container(container)
            containers = [container]
        else:  # a prefix of container names
            containers = [c.name for c in self.client.list_containers(name_starts_with=prefix)]
        for name in containers:
            yield from self._list_container(name, rest if sep else "")

    def _list_container(self, container: str, rest: str) -> Iterator[Stat]:
        from azure.core.exceptions import ResourceNotFoundError

        client = self.client.get_container_client(container)
        try:
            for props in client.list_blobs(name_starts_with=rest or None, include=["metadata"]):
                sha = (props.metadata or {}).get("sha256")
                yield Stat(f"{container}/{props.name}", props.size, props.etag.strip('"'), sha)
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


def _read_block(stream: BinaryIO) -> bytes:
    """Up to BLOCK bytes: a raw stream may return less per read before its end."""
    parts, size = [], 0
    while size < BLOCK:
        part = stream.read(BLOCK - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)

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
from ephemerid.azure.clients import blob_service
from ephemerid.azure.connection import StorageConnection
from ephemerid.azure.errors import error_code, sdk_errors
from ephemerid.errors import BadInput, Conflict, EphemeridError, NotFound

BLOCK = 4 * 1024 * 1024
_LOST_RACE = ("InvalidBlockList", "ConditionNotMet", "BlobAlreadyExists")
SCHEME = "az://"
ROLE = "Storage Blob Data Contributor"


def _calling(what: str) -> contextlib.AbstractContextManager[None]:
    return sdk_errors(what, role=ROLE)


class BlobArtifactStore:
    """``options`` go to the SDK's BlobServiceClient (a test's ``transport=``, ``retry_total=``)."""

    root_uri = SCHEME

    def __init__(self, connection: StorageConnection, **options: Any) -> None:
        blocks = {
            "max_block_size": BLOCK,
            "max_single_put_size": BLOCK,
            "max_single_get_size": BLOCK,
            "max_chunk_get_size": BLOCK,
        }
        self.client = blob_service(connection, **{**blocks, **options})
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
        if "/" not in key.strip("/"):
            raise NotFound(f"no artifact '{self.uri(key)}' (a container is not an artifact)")
        blob, what = self._blob(key), f"reading '{self.uri(key)}'"
        try:
            with _calling(what):
                if offset and offset >= blob.get_blob_properties().size:
                    return io.BytesIO(b"")
                downloader = blob.download_blob(offset=offset or None)
        except NotFound as exc:
            raise NotFound(f"no artifact '{self.uri(key)}'") from exc.__cause__
        return io.BufferedReader(_Chunks(downloader.chunks(), what), BLOCK)

    def write(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> Stat:
        """One Put Blob when it fits a block; else staged blocks committed with the hash.

        Either way the SHA-256 lands in the same request that makes the content visible.
        """
        from azure.core.exceptions import HttpResponseError, ResourceExistsError

        blob, what = self._blob(key), f"writing '{self.uri(key)}'"
        self._ensure_container(blob.container_name)
        sha256 = hashlib.sha256()
        first = _read_block(stream)
        second = _read_block(stream) if len(first) == BLOCK else b""
        condition: dict[str, Any] = {"if_none_match": "*"} if if_absent else {}
        try:
            with _calling(what):
                if not second:
                    sha256.update(first)
                    blob.upload_blob(
                        first, overwrite=not if_absent, metadata={"sha256": sha256.hexdigest()}
                    )
                else:
                    blocks = self._stage(blob, sha256, first, second, stream)
                    metadata = {"sha256": sha256.hexdigest()}
                    blob.commit_block_list(blocks, metadata=metadata, **condition)
        except EphemeridError as exc:
            cause = exc.__cause__
            if isinstance(cause, ResourceExistsError):
                raise Conflict(f"artifact '{self.uri(key)}' already exists") from cause
            if isinstance(cause, HttpResponseError) and error_code(cause) in _LOST_RACE:
                raise Conflict(
                    f"artifact '{self.uri(key)}' was written by another writer meanwhile"
                ) from cause
            raise
        with _calling(f"reading back '{self.uri(key)}'"):
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
        blob, what = self._blob(key), f"appending to '{self.uri(key)}'"
        self._ensure_container(blob.container_name)
        with contextlib.suppress(Conflict), _calling(what):
            blob.create_append_blob(if_none_match="*")  # 409: it exists, append to it
        try:
            with _calling(what):
                for start in range(0, len(data), BLOCK):
                    blob.append_block(data[start : start + BLOCK])
        except EphemeridError as exc:
            if exc.__cause__ is not None and error_code(exc.__cause__) == "InvalidBlobType":
                raise Conflict(
                    f"cannot append to '{self.uri(key)}': it was written whole, not appended"
                ) from exc.__cause__
            raise

    def stat(self, key: str) -> Stat | None:
        if "/" not in key.strip("/"):
            return None  # a container is not an artifact
        try:
            with _calling(f"reading the properties of '{self.uri(key)}'"):
                props = self._blob(key).get_blob_properties()
        except NotFound:
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
            with _calling(f"listing the containers '{prefix}*'"):
                found = self.client.list_containers(name_starts_with=prefix)
                containers = [c.name for c in found]
        for name in containers:
            yield from self._list_container(name, rest if sep else "")

    def _list_container(self, container: str, rest: str) -> Iterator[Stat]:
        client = self.client.get_container_client(container)
        blobs = client.list_blobs(name_starts_with=rest or None, include=["metadata"])
        while True:  # the SDK is called in next(): map its errors there, not in our caller's code
            try:
                with _calling(f"listing '{self.uri(container + '/' + rest)}'"):
                    props = next(blobs, None)
            except NotFound:  # no such container: nothing in it
                return
            if props is None:
                return
            sha = (props.metadata or {}).get("sha256")
            yield Stat(f"{container}/{props.name}", props.size, props.etag.strip('"'), sha)

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFound), _calling(f"deleting '{self.uri(key)}'"):
            self._blob(key).delete_blob()

    def _ensure_container(self, name: str) -> None:
        if name in self._containers:
            return
        with contextlib.suppress(Conflict), _calling(f"creating container '{name}'"):
            self.client.create_container(name)
        self._containers.add(name)


class _Chunks(io.RawIOBase):
    """A readable stream over the downloader's chunk iterator (one block in memory at a time)."""

    def __init__(self, chunks: Iterator[bytes], what: str) -> None:
        self._chunks, self._what = chunks, what
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            with _calling(self._what):
                chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = chunk
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

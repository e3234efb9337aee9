"""ArtifactStore: inputs, outputs, logs, metrics and models under one URI scheme.

Keys are ``<container>/<path>`` (``incoming/train/a.csv``, ``runs/<job>/result.json``,
``models/<name>/<version>/...``). Locally a container is a folder of the bucket; on Azure it is a
blob container. Everything streams: no verb reads a whole file into memory except
``get_bytes``, which is for small control files.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from ephemerid.errors import BadInput, UnsafeName

MAX_KEY_LENGTH = 1024
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Stat:
    key: str
    size: int
    etag: str
    sha256: str | None = None  # recorded when ephemerid wrote the artifact


class ArtifactStore(Protocol):
    root_uri: str

    def uri(self, key: str) -> str: ...

    def key_of(self, uri: str) -> str:
        """The key of ``uri``; BadInput if it is not in this store."""

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        """A stream of the artifact from byte ``offset``; NotFound naming it if absent."""

    def write(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> Stat:
        """Store the stream under ``key`` in blocks; readers see all of it or none.

        With ``if_absent`` an existing key raises Conflict and is left as it was.
        """

    def append(self, key: str, data: bytes) -> None:
        """Add ``data`` at the end (logs). Conflict if ``key`` was written whole by ``write``."""

    def stat(self, key: str) -> Stat | None: ...

    def list(self, prefix: str) -> Iterator[Stat]:
        """Artifacts whose key starts with ``prefix``."""

    def delete(self, key: str) -> None: ...


def safe_key(key: str, *, what: str = "blob name") -> str:
    """Return ``key`` if it stays inside its container; UnsafeName naming why otherwise."""
    reason = _unsafe_reason(key)
    if reason:
        raise UnsafeName(f"{what} '{key!s:.200}' is refused: {reason}")
    return key


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


def check_container(name: str, key: str | None = None) -> str:
    """A container name Azure accepts (3-63 lower-case letters, digits, single hyphens)."""
    if not _CONTAINER.match(name):
        where = f" in '{key}'" if key else ""
        raise BadInput(
            f"container '{name}'{where} is not a valid name: use 3-63 lower-case letters, digits "
            "and single hyphens (e.g. incoming, runs, models)"
        )
    return name


def split_key(key: str) -> tuple[str, str]:
    """(container, path) of a key; every artifact lives in a container."""
    container, _, path = safe_key(key).partition("/")
    if not path:
        raise BadInput(
            f"'{key}' names no artifact: keys are <container>/<path>, e.g. incoming/a.csv"
        )
    return check_container(container, key), path


def _unsafe_reason(key: str) -> str:
    if not key:
        return "it is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"it is longer than {MAX_KEY_LENGTH} characters"
    if "\\" in key:
        return "it contains a backslash"
    if _CONTROL.search(key):
        return "it contains control characters"
    if key.startswith("/"):
        return "it is an absolute path"
    parts = key.split("/")
    if any(p in ("..", ".") for p in parts):
        return "it contains '.' or '..' segments that would escape its prefix"
    if any(p == "" for p in parts):
        return "it contains an empty path segment"
    return ""


def get_bytes(store: ArtifactStore, key: str) -> bytes:
    with store.open_read(key) as stream:
        return stream.read()


def put_bytes(store: ArtifactStore, key: str, data: bytes, *, if_absent: bool = False) -> Stat:
    import io

    return store.write(key, io.BytesIO(data), if_absent=if_absent)


def upload_dir(
    store: ArtifactStore,
    local: Path,
    prefix: str,
    *,
    skip: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Upload every file under ``local`` to ``prefix/<relative path>``; return the keys.

    A file reached through a link that leads out of ``local`` is not uploaded: ``skip`` is
    told its relative name and why; without ``skip`` it is refused (UnsafeName).
    """
    inside = local.resolve()
    keys = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        name = path.relative_to(local).as_posix()
        target = path.resolve()
        if not target.is_relative_to(inside):
            why = f"it links to '{target}', outside '{local}'"
            if skip is None:
                raise UnsafeName(f"'{name}' is refused: {why}")
            skip(name, why)
            continue
        key = f"{prefix}/{name}"
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)  # the checked file, not a new link
        with os.fdopen(fd, "rb") as stream:
            store.write(safe_key(key), stream)
        keys.append(key)
    return keys


def download(store: ArtifactStore, key_or_prefix: str, local: Path) -> list[Path]:
    """Fetch one artifact into ``local/<basename>``, or a prefix's tree into ``local/``."""
    local.mkdir(parents=True, exist_ok=True)
    key = key_or_prefix.rstrip("/")
    if store.stat(key) is not None:
        items = [(key, local / PurePosixPath(key).name)]
    else:
        prefix = key + "/"
        items = [(s.key, local / s.key[len(prefix) :]) for s in store.list(prefix)]
    for key, target in items:
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.open_read(key) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    return [target for _, target in items]


def copy_prefix(store: ArtifactStore, src: str, dst: str) -> list[str]:
    """Copy every artifact under ``src/`` to the same relative key under ``dst/``."""
    keys = []
    for item in list(store.list(src.rstrip("/") + "/")):
        key = dst.rstrip("/") + item.key[len(src.rstrip("/")) :]
        with store.open_read(item.key) as stream:
            store.write(key, stream)
        keys.append(key)
    return keys


def _local(target: str, storage: Mapping[str, str]) -> ArtifactStore:
    from ephemerid.artifacts.local import LocalArtifactStore

    return LocalArtifactStore(Path(target))


def _blob(target: str, storage: Mapping[str, str]) -> ArtifactStore:
    from ephemerid.artifacts.blob import BlobArtifactStore
    from ephemerid.azure.connection import storage_connection

    if target:
        raise BadInput(
            f"az://{target}: the Azure bucket's root is plain az:// (account from "
            "the EPHEMERID_STORAGE connection)"
        )
    return BlobArtifactStore(storage_connection(storage))


# scheme -> factory taking the rest of the root URI and the storage connection's settings
ADAPTERS: dict[str, Callable[[str, Mapping[str, str]], ArtifactStore]] = {
    "file": _local,
    "az": _blob,
}


def open_artifacts(root_uri: str, storage: Mapping[str, str] | None = None) -> ArtifactStore:
    """``file:///abs/bucket`` (local folder) or ``az://`` (Azure Blob Storage).

    ``storage`` is the EPHEMERID_STORAGE connection's settings by name (``Settings.storage``);
    none given, there is no connection, and ``az://`` says which settings to set.
    """
    scheme, sep, rest = root_uri.partition("://")
    if not sep or scheme not in ADAPTERS:
        raise BadInput(
            f"artifact store '{root_uri}' is not supported: use one of "
            + ", ".join(f"{name}://..." for name in ADAPTERS)
        )
    return ADAPTERS[scheme](rest, storage or {})

"""A local folder as the bucket (``file://``): the embedded default."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ephemerid.artifacts import CHUNK, Stat, safe_key, split_key
from ephemerid.errors import BadInput, Conflict, NotFound

_TEMP_MARK = ".tmp-"


class LocalArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root_uri = f"file://{self.root.as_posix()}"

    def uri(self, key: str) -> str:
        return f"{self.root_uri}/{key}"

    def key_of(self, uri: str) -> str:
        prefix = self.root_uri + "/"
        if not uri.startswith(prefix):
            raise BadInput(f"'{uri}' is not in this artifact store: URIs start with {prefix}")
        return safe_key(uri[len(prefix) :], what="artifact URI")

    def _path(self, key: str) -> Path:
        container, path = split_key(key)
        return self.root / container / path

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        if "/" not in key.strip("/"):
            raise NotFound(f"no artifact '{self.uri(key)}' (a container is not an artifact)")
        try:
            stream = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFound(f"no artifact '{self.uri(key)}'") from exc
        stream.seek(offset)
        return stream

    def write(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> Stat:
        """Write a temp file beside ``key``, then rename (or link, ``if_absent``) it into place.

        The system calls are counted (a file created costs most of a new job on a slow disk): a
        folder in the way is found by the rename failing, the Stat comes from the temp file's
        own descriptor (the rename keeps its size and mtime), and the temp file is removed only
        where it is still there.
        """
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise BadInput(f"cannot write '{self.uri(key)}': a part of its path is a file") from exc
        temp = path.with_name(f".{path.name}{_TEMP_MARK}{uuid.uuid4().hex[:8]}")
        sha256 = hashlib.sha256()
        try:
            with temp.open("wb") as out:
                while chunk := stream.read(CHUNK):
                    sha256.update(chunk)
                    out.write(chunk)
                out.flush()
                st = os.fstat(out.fileno())
            self._place(key, temp, path, if_absent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if if_absent:
            temp.unlink()  # the link is in place
        etag = f"{st.st_mtime_ns:x}-{st.st_size:x}"
        return Stat(key=key, size=st.st_size, etag=etag, sha256=sha256.hexdigest())

    def _place(self, key: str, temp: Path, path: Path, if_absent: bool) -> None:
        try:
            if if_absent:
                os.link(temp, path)  # atomic create-if-absent
            else:
                os.replace(temp, path)
        except (FileExistsError, IsADirectoryError) as exc:
            if path.is_dir():
                raise BadInput(
                    f"cannot write '{self.uri(key)}': it is a folder of other artifacts"
                ) from exc
            raise Conflict(f"artifact '{self.uri(key)}' already exists") from exc

    def append(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as out:
            out.write(data)

    def stat(self, key: str) -> Stat | None:
        if "/" not in key.strip("/"):
            return None  # a container is not an artifact
        path = self._path(key)
        return self._stat(key, path) if path.is_file() else None

    def list(self, prefix: str) -> Iterator[Stat]:
        if prefix.strip("/"):
            safe_key(prefix.rstrip("/"), what="prefix")
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(".") and _TEMP_MARK in name:
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield self._stat(key, path)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @staticmethod
    def _stat(key: str, path: Path) -> Stat:
        st = path.stat()
        return Stat(key=key, size=st.st_size, etag=f"{st.st_mtime_ns:x}-{st.st_size:x}")

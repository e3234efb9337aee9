"""Blob triggers fed from the bucket: the service's ArtifactStore, polled like Event Grid pushes.

A blob is delivered once its ETag has been the same for two polls in a row (so a file still
being copied is not picked up half-written), and again only if it changes. A function that
raises gets the blob again on the next poll, up to ``MAX_ATTEMPTS`` times. Restarting the dev
host delivers what is there again, which is harmless: every delivery is idempotent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.functions.blob import InputStream

from ephemerid.artifacts import ArtifactStore, Stat
from ephemerid.devhost.functions import HostedFunction
from ephemerid.errors import BadInput

log = logging.getLogger("ephemerid.devhost")
MAX_ATTEMPTS = 5
_FIELD = re.compile(r"\{([^{}]+)\}")

Invoke = Callable[[HostedFunction, object, str], object]


class BlobPattern:
    """A blob trigger path such as ``incoming/{name}``; ``{x}`` matches anything, '/' too."""

    def __init__(self, path: str) -> None:
        self.path = path
        container, sep, _ = path.partition("/")
        if not sep or "{" in container:
            raise BadInput(f"blob trigger path '{path}' must start with a fixed container name")
        self.prefix = path[: path.index("{")] if "{" in path else path
        regex, fields, at = "", set(), 0
        for found in _FIELD.finditer(path):
            regex += re.escape(path[at : found.start()])
            name = found.group(1)
            regex += f"(?P={name})" if name in fields else f"(?P<{name}>.+)"
            fields.add(name)
            at = found.end()
        self._regex = re.compile(regex + re.escape(path[at:]))

    def match(self, key: str) -> dict[str, str] | None:
        found = self._regex.fullmatch(key)
        return found.groupdict() if found else None


def blob_stream(artifacts: ArtifactStore, stat: Stat) -> InputStream:
    """The InputStream the Functions host would pass for this blob, without its content.

    ephemerid's functions use only the blob's name, length and ETag (the job's runner streams
    the blob itself), and InputStream copies whatever data it is given into memory, so the dev
    host gives it none rather than read every dropped file, gigabytes maybe, into memory.
    """
    return InputStream(
        data=b"",
        name=stat.key,
        uri=artifacts.uri(stat.key),
        length=stat.size,
        blob_properties={"ETag": f'"{stat.etag}"', "ContentLength": stat.size},
    )


@dataclass
class BlobSource:
    function: HostedFunction
    artifacts: ArtifactStore
    invoke: Invoke
    pattern: BlobPattern = field(init=False)
    _seen: dict[str, str] = field(default_factory=dict)
    _pending: dict[str, str] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pattern = BlobPattern(str(self.function.binding["path"]))

    def describe(self) -> str:
        return f"bucket {self.artifacts.uri(self.pattern.path)} (polled)"

    def poll(self) -> int:
        """One pass over the blobs under the pattern's prefix; returns deliveries made."""
        present, pending, delivered = set(), {}, 0
        for stat in self.artifacts.list(self.pattern.prefix):
            if self.pattern.match(stat.key) is None:
                continue
            present.add(stat.key)
            if self._seen.get(stat.key) == stat.etag:
                continue
            if self._pending.get(stat.key) != stat.etag:
                pending[stat.key] = stat.etag  # first sighting: wait one poll for it to settle
            elif self._deliver(stat):
                delivered += 1
            else:
                pending[stat.key] = stat.etag  # the function failed: again on the next poll
        self._pending = pending
        self._seen = {k: v for k, v in self._seen.items() if k in present}
        return delivered

    def _deliver(self, stat: Stat) -> bool:
        try:
            self.invoke(self.function, blob_stream(self.artifacts, stat), stat.key)
        except Exception as exc:
            attempts = self._failures.get(stat.key, 0) + 1
            if attempts < MAX_ATTEMPTS:
                self._failures[stat.key] = attempts
                return False
            log.error(
                "%s failed %d times on %s (last: %s); giving up on this version of the blob",
                self.function.name,
                attempts,
                stat.key,
                exc,
            )
        self._failures.pop(stat.key, None)
        self._seen[stat.key] = stat.etag
        return True

"""Model versions and aliases, kept in the artifact store next to the runs that made them.

``models/<name>/<version>/version.json`` claims a version (created only if absent, so two jobs
finishing at once get different numbers) and ``models/<name>/<version>/files/`` holds the model.
``models/<name>/aliases/<alias>.json`` points an alias such as ``production`` at a version.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from ephemerid.artifacts import ArtifactStore, copy_prefix, get_bytes, put_bytes
from ephemerid.errors import BadInput, Conflict, NotFound
from ephemerid.names import MODELS, model_key
from ephemerid.record import utcnow
from ephemerid.spec import NAME_RE, ModelRef

READY = "ready"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    job_id: str
    created_at: str
    state: str
    metrics: dict[str, float]

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def files(self) -> str:
        return f"{model_key(self.name, self.version)}/files"


class ModelRegistry:
    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts

    def names(self) -> list[str]:
        return sorted({s.key.split("/")[1] for s in self.artifacts.list(f"{MODELS}/")})

    def versions(self, name: str) -> list[ModelVersion]:
        found = []
        for item in self.artifacts.list(f"{model_key(name)}/"):
            parts = item.key.split("/")
            if (
                len(parts) == 4
                and parts[2].isascii()
                and parts[2].isdigit()
                and parts[3] == "version.json"
            ):
                found.append(_version(json.loads(get_bytes(self.artifacts, item.key))))
        return sorted(found, key=lambda v: v.version)

    def aliases(self, name: str) -> dict[str, int]:
        prefix = f"{model_key(name)}/aliases/"
        return {
            item.key[len(prefix) : -len(".json")]: int(
                json.loads(get_bytes(self.artifacts, item.key))["version"]
            )
            for item in self.artifacts.list(prefix)
            if item.key.endswith(".json")
        }

    def resolve(self, ref: ModelRef) -> ModelVersion:
        """The ready version ``ref`` names; NotFound saying what exists otherwise."""
        ready = {v.version: v for v in self.versions(ref.name) if v.state == READY}
        if not ready:
            known = ", ".join(self.names()) or "none yet"
            raise NotFound(f"model '{ref.name}' has no versions (models: {known})")
        if ref.alias is not None:
            aliases = self.aliases(ref.name)
            if ref.alias not in aliases:
                have = ", ".join(sorted(aliases)) or "none"
                raise NotFound(
                    f"model '{ref.name}' has no alias '{ref.alias}' (aliases: {have}); "
                    f"promote one with `eph models promote {ref.name}:<version> {ref.alias}`"
                )
            number = aliases[ref.alias]
        else:
            number = ref.version or 0
        if number not in ready:
            raise NotFound(
                f"model '{ref.name}' has no version {number} "
                f"(versions: {', '.join(map(str, sorted(ready)))})"
            )
        return ready[number]

    def register(
        self, name: str, source: str, *, job_id: str, metrics: dict[str, float]
    ) -> ModelVersion:
        """Copy ``source`` (a prefix) in as the next version; a job registers at most once.

        ``models/<name>/jobs/<job>.json``, created only if absent, decides which of several
        deliveries of one completion registers; the others wait for its version number.
        """
        number = self._version_of_job(name, job_id, metrics)
        claimed = ModelVersion(name, number, job_id, utcnow().isoformat(), "copying", metrics)
        copy_prefix(self.artifacts, source, claimed.files)
        ready = ModelVersion(**{**claimed.__dict__, "state": READY})
        put_bytes(self.artifacts, f"{model_key(name, number)}/version.json", _dump(ready))
        return ready

    def promote(self, name: str, version: int, alias: str) -> ModelVersion:
        if not NAME_RE.match(alias) or alias.isdigit():
            raise BadInput(f"alias '{alias}' is not valid: use letters, digits, '.', '_' or '-'")
        target = self.resolve(ModelRef(name=name, version=version))
        put_bytes(
            self.artifacts,
            f"{model_key(name)}/aliases/{alias}.json",
            json.dumps({"version": version, "at": utcnow().isoformat()}).encode(),
        )
        return target

    def _version_of_job(self, name: str, job_id: str, metrics: dict[str, float]) -> int:
        marker = f"{model_key(name)}/jobs/{job_id}.json"
        try:
            put_bytes(self.artifacts, marker, b"{}", if_absent=True)
        except Conflict:
            return self._wait_for_number(marker, job_id)
        number = self._claim(name, job_id, metrics)
        put_bytes(self.artifacts, marker, json.dumps({"version": number}).encode())
        return number

    def _wait_for_number(self, marker: str, job_id: str, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            number = json.loads(get_bytes(self.artifacts, marker)).get("version")
            if number:
                return int(number)
            time.sleep(0.05)
        raise Conflict(f"job {job_id} is still registering its model elsewhere; retry later")

    def _claim(self, name: str, job_id: str, metrics: dict[str, float]) -> int:
        number = max((v.version for v in self.versions(name)), default=0) + 1
        while True:
            claim = ModelVersion(name, number, job_id, utcnow().isoformat(), "copying", metrics)
            try:
                put_bytes(
                    self.artifacts,
                    f"{model_key(name, number)}/version.json",
                    _dump(claim),
                    if_absent=True,
                )
                return number
            except Conflict:
                number += 1


def _dump(version: ModelVersion) -> bytes:
    return json.dumps(version.__dict__).encode()


def _version(data: dict[str, Any]) -> ModelVersion:
    return ModelVersion(**data)

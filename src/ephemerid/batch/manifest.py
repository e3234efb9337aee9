"""``runs/<job>/outputs/predictions/manifest.json``: the shards a batch job has written.

The runner uploads each shard first, then this manifest listing it: a shard listed here is
complete, and a rerun of the job (a restart, a retry after an eviction) skips the rows of the
shards listed and never writes one of them again. Shard boundaries are fixed by the input order
and ``max_rows_per_shard``, so a rerun cuts the same shards. One model, one version, one
writer and reader (``dumps``, ``loads``).
"""

from __future__ import annotations

import builtins
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ephemerid import names

MANIFEST_VERSION = 1
PREDICTIONS_DIR = "predictions"
MANIFEST_FILE = "manifest.json"


def predictions_key(job_id: str, name: str) -> str:
    return names.run_key(job_id, f"{names.OUTPUTS_DIR}/{PREDICTIONS_DIR}/{name}")


def shard_name(index: int, suffix: str) -> str:
    return f"part-{index:05d}{suffix}"


class InputRange(BaseModel):
    """Rows ``start`` (inclusive) to ``end`` (exclusive) of one input file, as read."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    key: str
    start: int = Field(ge=0)
    end: int = Field(ge=0)


class Shard(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    key: str
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    start: int = Field(ge=0)  # the shard's first row in the whole input, in order
    inputs: list[InputRange]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: int = MANIFEST_VERSION
    job_id: str
    output_format: str
    max_rows_per_shard: int = Field(ge=1)
    rows: int = Field(default=0, ge=0)
    bytes: int = Field(default=0, ge=0)
    bad_rows: int = Field(default=0, ge=0)
    complete: bool = False  # every input read and every shard written
    shards: list[Shard] = Field(default_factory=list)

    def dumps(self) -> builtins.bytes:
        return self.model_dump_json(indent=1).encode()

    @classmethod
    def loads(cls, data: builtins.bytes, where: str) -> Self:
        try:
            manifest = cls.model_validate_json(data)
        except ValidationError as exc:
            raise ValueError(f"{where} is not a batch manifest this runner reads: {exc}") from exc
        if manifest.version != MANIFEST_VERSION:
            raise ValueError(
                f"{where} is manifest version {manifest.version}; this runner reads "
                f"{MANIFEST_VERSION}: rerun the job with the release that started it"
            )
        return manifest

    def add(self, shard: Shard) -> None:
        self.shards.append(shard)
        self.rows += shard.rows
        self.bytes += shard.bytes

    @property
    def done_rows(self) -> int:
        """Rows already in complete shards: a rerun starts after them."""
        return sum(shard.rows for shard in self.shards)

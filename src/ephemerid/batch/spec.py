"""The ``batch:`` section of a predict job's spec: how the harness reads, scores and writes.

It travels to the runner in the launch (``Launch.batch``), so it imports nothing but pydantic.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# input file extension -> format (ephemerid.batch.formats reads them)
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl"}
FORMATS[".json"] = "jsonl"
ROWS_PER_BATCH = 65536
MAX_ROWS_PER_BATCH = 4 * 1024 * 1024
MAX_ROWS_PER_SHARD = 1_000_000
MAX_KEEP = 256
MAX_SHARDS = 1000


class BatchSpec(BaseModel):
    """``rows_per_batch``, ``keep``, ``output_format``, ``max_rows_per_shard`` (rows per output
    file), ``on_bad_rows``, ``as``, and the fan-out's ``shards`` or ``max_rows_per_job``: see
    docs/batch.md."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    rows_per_batch: int = Field(default=ROWS_PER_BATCH, ge=1, le=MAX_ROWS_PER_BATCH)
    keep: list[str] = Field(default_factory=list, max_length=MAX_KEEP)
    output_format: Literal["parquet", "csv", "jsonl"] = "parquet"
    max_rows_per_shard: int = Field(default=MAX_ROWS_PER_SHARD, ge=1, le=1_000_000_000)
    on_bad_rows: Literal["fail", "skip"] = "fail"
    as_: Literal["arrow", "pandas"] = Field(default="arrow", alias="as")
    # fan-out (ephemerid.batch.fanout): the inputs' files split across this many child jobs,
    # or across as many as it takes for none to get more than this many rows
    shards: int | None = Field(default=None, ge=1, le=MAX_SHARDS)
    max_rows_per_job: int | None = Field(default=None, ge=1, le=1_000_000_000_000)

    @model_validator(mode="after")
    def _keep_unique(self) -> BatchSpec:
        doubled = sorted({name for name in self.keep if self.keep.count(name) > 1})
        if doubled:
            raise ValueError(f"batch.keep names {', '.join(doubled)} more than once")
        if any(not name for name in self.keep):
            raise ValueError("batch.keep has an empty column name")
        if self.shards is not None and self.max_rows_per_job is not None:
            raise ValueError(
                "batch.shards and batch.max_rows_per_job both split the job: set one of them"
            )
        return self


def unreadable(key: str, size: int) -> str:
    """Why the harness cannot score input file ``key`` (of ``size`` bytes); empty if it can."""
    if PurePosixPath(key).suffix.lower() not in FORMATS:
        accepted = ", ".join(sorted(FORMATS))
        return (
            f"input '{key}' is not a format the batch harness reads: name it with one of "
            f"{accepted} (Parquet, CSV or JSON Lines)"
        )
    if size == 0:
        return f"input '{key}' is empty (0 bytes): there is nothing to score"
    return ""

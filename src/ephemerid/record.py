"""The job record: what the store keeps, and the states a job and its compute go through."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from ephemerid.errors import BadInput
from ephemerid.spec import JobSpec


class JobState(str, Enum):
    ACCEPTED = "ACCEPTED"
    WAITING_FOR_CAPACITY = "WAITING_FOR_CAPACITY"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    # a sweep's trial stopped early, behind the others at the same step (the reason says so)
    PRUNED = "PRUNED"

    @classmethod
    def parse(cls, value: JobState | str, flag: str = "state") -> JobState:
        """A state by its name, in any case; BadInput naming ``flag`` and the states there are."""
        if isinstance(value, JobState):
            return value
        try:
            return cls(value.upper())
        except ValueError as exc:
            raise BadInput(f"{flag}: {exc}; use one of {', '.join(s.value for s in cls)}") from exc

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED, JobState.PRUNED}
)


class ComputeState(str, Enum):
    """Compute has its own life: a job is done for the bill only when this is RELEASED."""

    NONE = "none"
    REQUESTED = "requested"
    LIVE = "live"
    RELEASED = "released"


def utcnow() -> datetime:
    return datetime.now(UTC)


def job_id_for(kind: str, key: str) -> str:
    """Readable and derived from the idempotency key: the same event names the same job."""
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
    return f"{kind}-{digest}"


def idempotency_key(own: str | None, key: str | None, namespace: str | None) -> str:
    """The key a submit is known by: the spec's own (a sender's, inside ``namespace`` when one is
    given, so a sender cannot claim another source's key), else the caller's, else a new one."""
    if own and namespace:
        own = f"{namespace}:{own}"
    return own or key or f"uuid:{uuid.uuid4()}"


@dataclass(frozen=True)
class JobRecord:
    id: str
    key: str
    spec: JobSpec
    source: str
    state: JobState = JobState.ACCEPTED
    owner: str = (
        ""  # who submitted it (``key:<name>``, ``entra:<id>``, ``queue``, ``rule:<name>``...)
    )
    reason: str = ""
    compute_state: ComputeState = ComputeState.NONE
    backend: str = ""
    # the Python that runs the job's runner on local compute: the submitter's own interpreter
    # (the CLI's, a notebook's, the agent's for a job an event made), whoever starts the job
    python: str = ""
    handle: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    compute_requested_at: datetime | None = None
    live_at: datetime | None = None
    released_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # the first (contract.OUTPUTS_LISTED)
    output_count: int = 0  # all of them, listed in runs/<job>/outputs.json (older jobs: 0)
    output_bytes: int | None = None
    model_version: str = ""
    teardown_attempts: int = 0
    # what was rented, for the bill: the price is taken when the compute goes live
    sku: str = ""
    spot: bool = False
    price_per_hour: float | None = None
    # billed after the release: an Azure ML cluster's idle time before it scales down
    billed_tail_s: float = 0.0
    # compute given back before this one (a spot eviction re-provisions): sku, spot, held_s, cost
    earlier_compute: list[dict[str, Any]] = field(default_factory=list)
    evictions: int = 0
    # what compute.max_cost decided at submit (ephemerid.costs.limits.CostLimit.to_json)
    cost_limit: dict[str, Any] | None = None
    waiting_since: datetime | None = None
    next_try_at: datetime | None = None
    # the job's environment (envs.identity), "" for the runner's own; seconds building it
    environment: str = ""
    setup_s: float | None = None
    # a sweep's trial or a batch shard: its parent's id; a sweep: its search and its trials
    parent: str = ""
    sweep: dict[str, Any] | None = None
    fanout: dict[str, Any] | None = None  # a batch job over shards: its files per shard
    version: int = 0

    def evolve(self, **changes: Any) -> JobRecord:
        """A copy with ``changes`` and a new ``updated_at``.

        What ``dataclasses.replace`` does, without running ``__init__`` over all 32 fields again
        (a record is copied several times per event, and JobRecord has no ``__post_init__``):
        the values are copied as they are, as ``replace`` copies them.
        """
        unknown = changes.keys() - _FIELDS_SET
        if unknown:
            raise TypeError(f"JobRecord has no field {', '.join(sorted(unknown))}")
        copied = object.__new__(type(self))
        copied.__dict__.update(self.__dict__, updated_at=utcnow(), **changes)
        return copied

    @property
    def kind(self) -> str:
        """``train``, ``predict`` or ``sweep`` (whose spec is its trials' template)."""
        return "sweep" if self.sweep is not None else self.spec.kind.value

    @property
    def makes_jobs(self) -> bool:
        """A sweep, or a batch job fanned out over shards: it rents nothing, its children do."""
        return self.sweep is not None or self.fanout is not None

    @property
    def model_owed(self) -> bool:
        """A succeeded train job whose ``model/`` output is not registered yet."""
        model_dir = f"runs/{self.id}/outputs/model/"
        return (
            self.state is JobState.SUCCEEDED
            and self.spec.register_as is not None
            and not self.model_version
            and any(key.startswith(model_dir) for key in self.outputs)
        )

    @property
    def settled(self) -> bool:
        """Over for the user and for the bill: terminal, with no compute held."""
        return self.state.terminal and self.compute_state in (
            ComputeState.NONE,
            ComputeState.RELEASED,
        )

    @property
    def open(self) -> bool:
        """Unfinished for the user, or not yet for the bill, or a model owed: the reaper's."""
        unreleased = self.compute_state in (ComputeState.REQUESTED, ComputeState.LIVE)
        return not self.state.terminal or unreleased or self.model_owed

    @property
    def runtime_s(self) -> float | None:
        """Seconds the user's code ran."""
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    def _billed_s(self, end: datetime | None) -> float | None:
        """This rental's billed seconds: requested to ``end``, and its billed tail."""
        if not (self.compute_requested_at and end):
            return None
        return (end - self.compute_requested_at).total_seconds() + self.billed_tail_s

    @property
    def held_s(self) -> float | None:
        """Seconds the compute was held (requested to released, and its billed tail)."""
        held = self._billed_s(self.released_at)
        if held is None:
            return None
        return held + sum(float(c.get("held_s") or 0) for c in self.earlier_compute)

    @property
    def cost_usd(self) -> float | None:
        """What the compute cost at the prices it was rented at, so far if it is still held."""
        costs = [c.get("cost_usd") for c in self.earlier_compute]
        held = self._billed_s(self.released_at or utcnow())
        if self.price_per_hour is not None and held is not None:
            costs.append(held / 3600 * self.price_per_hour)
        known = [float(c) for c in costs if c is not None]
        return round(sum(known), 6) if known else None

    def rental(self, reason: str) -> dict[str, Any]:
        """This compute as one closed line of the bill (for ``earlier_compute``)."""
        held = self._billed_s(self.released_at)
        cost = None
        if held is not None and self.price_per_hour is not None:
            cost = round(held / 3600 * self.price_per_hour, 6)
        return {"sku": self.sku, "spot": self.spot, "held_s": held, "cost_usd": cost, "why": reason}

    def to_json(self) -> dict[str, Any]:
        """The record as JSON values, the caller's own to change."""
        return self._json_values(own=True)

    def _json_values(self, *, own: bool) -> dict[str, Any]:
        # Not asdict(): it deep-copies the spec (a pydantic model) only for the copy to be
        # replaced by its dump below. ``own``: deep-copy the dicts and lists, which ``dumps``
        # (that only encodes them) does not need.
        data = {name: getattr(self, name) for name in _FIELDS}
        if own:
            for name, value in data.items():
                if isinstance(value, dict | list):
                    data[name] = copy.deepcopy(value)
        data["spec"] = self.spec.model_dump(mode="json", exclude_none=True)
        data["state"] = self.state.value
        data["compute_state"] = self.compute_state.value
        for name, value in data.items():
            if isinstance(value, datetime):
                data[name] = value.isoformat()
        data["kind"] = self.kind
        data["open"] = self.open
        data["runtime_s"] = self.runtime_s
        data["held_s"] = self.held_s
        data["cost_usd"] = self.cost_usd
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        derived = ("kind", "open", "runtime_s", "held_s", "cost_usd")
        values = {k: v for k, v in data.items() if k not in derived}
        values["spec"] = JobSpec.model_validate(values["spec"])
        values["state"] = JobState(values["state"])
        values["compute_state"] = ComputeState(values["compute_state"])
        for name in _TIMES:
            if values.get(name):
                values[name] = datetime.fromisoformat(values[name])
        return cls(**values)

    def dumps(self) -> str:
        """``to_json()`` as compact JSON text: what the stores keep."""
        return json.dumps(self._json_values(own=False), separators=(",", ":"))


_FIELDS = tuple(f.name for f in fields(JobRecord))
_FIELDS_SET = frozenset(_FIELDS)


_TIMES = (
    "created_at",
    "updated_at",
    "compute_requested_at",
    "live_at",
    "released_at",
    "started_at",
    "finished_at",
    "waiting_since",
    "next_try_at",
)


@dataclass(frozen=True)
class Submitted:
    """What a submit made: the job (or sweep), and whether this call created it."""

    job: JobRecord
    created: bool

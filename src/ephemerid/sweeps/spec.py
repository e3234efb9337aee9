"""SweepSpec: a search over a train job's params, validated before any trial is made.

```yaml
kind: sweep
name: mlp-lr
trial: {code: ./tabular, entrypoint: train.py, compute: {gpus: 1}}   # a train job's fields
search:
  method: grid | random | bayes          # bayes: Optuna's TPE sampler
  space: {lr: {loguniform: [1.0e-4, 1.0e-1]}, hidden: [32, 64, 128], epochs: {int: [5, 20]}}
  metric: val_loss
  goal: minimize
  max_trials: 24
  max_parallel: 4
  early_stop: median
register_best: {name: tabular, alias: staging}
```

A dimension is a list of values (a choice), or ``{uniform|loguniform|int: [low, high]}`` with an
optional ``step``. Everything here is plain data: Optuna's distributions are made from it only
where trials are sampled (``ephemerid.sweeps.search``), so reading a sweep never imports Optuna.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ephemerid.spec import NAME_RE, JobSpec, PlainText, Registration, validate_spec
from ephemerid.validation import validated

MAX_TRIALS_LIMIT = 10_000  # whatever EPHEMERID_SWEEP_MAX_TRIALS says, never more
MAX_CHOICES = 1_000
DIMENSION_RE = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
RANGES = ("uniform", "loguniform", "int")
Scalar = str | int | float | bool | None


class Method(str, Enum):
    GRID = "grid"
    RANDOM = "random"
    BAYES = "bayes"


class Goal(str, Enum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class Dimension(BaseModel):
    """One param's values: ``choices``, or a ``kind`` range from ``low`` to ``high``."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["choice", "uniform", "loguniform", "int"]
    choices: tuple[Scalar, ...] = ()
    low: float = 0.0
    high: float = 0.0
    step: float | None = None

    @property
    def grid(self) -> tuple[Scalar, ...] | None:
        """Every value, for a grid; None for a continuous range."""
        if self.kind == "choice":
            return self.choices
        if self.kind == "int":
            step = int(self.step or 1)
            return tuple(range(int(self.low), int(self.high) + 1, step))
        return None


def parse_dimension(name: str, value: Any) -> Dimension:
    where = f"search.space.{name}"
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{where} is an empty list: give the values to try, e.g. [32, 64]")
        if len(value) > MAX_CHOICES:
            raise ValueError(f"{where} has {len(value)} values; at most {MAX_CHOICES}")
        for item in value:
            finite = not isinstance(item, float) or math.isfinite(item)
            if not isinstance(item, Scalar) or not finite:
                raise ValueError(
                    f"{where}: {item!r:.60} cannot be a choice: use numbers, text, true/false or "
                    "null (pass structured values as one name each and map them in the script)"
                )
        if len(set(map(repr, value))) != len(value):
            raise ValueError(f"{where} lists a value twice: list each value once")
        return Dimension(kind="choice", choices=tuple(value))
    if not isinstance(value, dict) or len(value.keys() - {"step"}) != 1:
        raise ValueError(
            f"{where}: write a list of values ([32, 64]) or one of "
            "{uniform: [low, high]}, {loguniform: [low, high]}, {int: [low, high]} "
            "(optionally with step)"
        )
    (kind,) = value.keys() - {"step"}
    if kind not in RANGES:
        raise ValueError(f"{where}: unknown distribution '{kind}': use one of {', '.join(RANGES)}")
    bounds = value[kind]
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(_number(b) for b in bounds)
        or (kind == "int" and not all(float(b).is_integer() for b in bounds))
    ):
        whole = "whole numbers" if kind == "int" else "numbers"
        raise ValueError(f"{where}.{kind} must be [low, high], two {whole}, e.g. [1, 10]")
    low, high = (float(b) for b in bounds)
    if low > high:
        raise ValueError(f"{where}.{kind}: low {bounds[0]} is above high {bounds[1]}: swap them")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{where}.loguniform: low must be above 0 (a log scale), got {bounds[0]}")
    step = value.get("step")
    if step is not None:
        if not _number(step) or float(step) <= 0:
            raise ValueError(f"{where}.step must be a number above 0, got {step!r:.40}")
        if kind == "loguniform":
            raise ValueError(f"{where}: a loguniform range takes no step: use uniform with a step")
        if kind == "int" and not float(step).is_integer():
            raise ValueError(f"{where}.step of an int range must be a whole number")
    return Dimension(kind=kind, low=low, high=high, step=None if step is None else float(step))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class EarlyStop(BaseModel):
    """Optuna's median pruner: stop a trial whose best value so far is behind the median of
    the finished trials' values at the same step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["median"] = "median"
    warmup_steps: Annotated[int, Field(ge=0, le=100_000)] = 0  # steps never pruned at
    startup_trials: Annotated[int, Field(ge=1, le=10_000)] = 3  # finished trials before any


def _early_stop(value: Any) -> Any:
    return {"method": value} if isinstance(value, str) else value


class Search(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method
    space: dict[Annotated[str, Field(pattern=DIMENSION_RE)], Any]
    metric: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    goal: Goal = Goal.MINIMIZE
    max_trials: Annotated[int | None, Field(ge=1, le=MAX_TRIALS_LIMIT)] = None
    max_parallel: Annotated[int, Field(ge=1, le=1_000)] = 1
    early_stop: Annotated[EarlyStop | None, Field(default=None)] = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0

    @field_validator("early_stop", mode="before")
    @classmethod
    def _early(cls, value: Any) -> Any:
        return _early_stop(value)

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Any]) -> dict[str, Any]:
        if not space:
            raise ValueError("the search space is empty: name at least one param, e.g. lr: [0.1]")
        for name, value in space.items():
            parse_dimension(name, value)
        return space

    @model_validator(mode="after")
    def _check(self) -> Search:
        if self.metric is None:
            for needs, what in (
                (self.method is Method.BAYES, "method bayes ranks trials by it"),
                (self.early_stop is not None, "early_stop compares trials by it"),
            ):
                if needs:
                    raise ValueError(
                        f"search.metric is missing, and {what}: name the metric the trials log "
                        "with track.log_metric (e.g. metric: val_loss)"
                    )
        if self.method is Method.GRID:
            ranges = [n for n, d in self.dimensions.items() if d.grid is None]
            if ranges:
                raise ValueError(
                    f"a grid takes lists or int ranges; {', '.join(ranges)} "
                    "is a continuous range: list its values, or use method random or bayes"
                )
            if self.grid_size > MAX_TRIALS_LIMIT:
                size = self.grid_size
                raise ValueError(f"the grid has {size} points; at most {MAX_TRIALS_LIMIT}")
        elif self.max_trials is None:
            raise ValueError(
                f"search.max_trials is missing: say how many trials a {self.method.value} search "
                "runs (e.g. max_trials: 24)"
            )
        return self

    @property
    def dimensions(self) -> dict[str, Dimension]:
        return {name: parse_dimension(name, value) for name, value in self.space.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.grid or ()) for d in self.dimensions.values())

    @property
    def trials(self) -> int:
        """How many trials the sweep runs: max_trials, and for a grid at most its points."""
        if self.method is Method.GRID:
            return min(self.max_trials or self.grid_size, self.grid_size)
        assert self.max_trials is not None
        return self.max_trials


class SweepSpec(BaseModel):
    """A sweep: ``trial`` is a train job's template, ``search`` what varies in its params."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sweep"]
    name: Annotated[str | None, Field(pattern=NAME_RE.pattern)] = None
    trial: JobSpec
    search: Search
    register_best: Registration | None = None
    idempotency_key: Annotated[PlainText | None, Field(min_length=1, max_length=512)] = None

    @field_validator("trial", mode="before")
    @classmethod
    def _trial(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        if value.get("kind", "train") != "train":
            raise ValueError("a sweep's trial is a train job: remove 'kind' or write kind: train")
        for field, instead in (
            ("idempotency_key", "each trial's key is derived from the sweep's"),
            ("register_as", "use the sweep's register_best, which registers the best trial"),
        ):
            if field in value:
                raise ValueError(f"a sweep's trial takes no '{field}': {instead}")
        return {**value, "kind": "train"}

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if self.register_best is not None and self.search.metric is None:
            raise ValueError(
                "register_best needs search.metric: the best trial is the one with the best "
                "value of it"
            )
        return self

    @property
    def label(self) -> str:
        return self.name or self.trial.label


def validate_sweep(data: Any, what: str = "sweep spec") -> SweepSpec:
    return validated(SweepSpec, data, what)


def validate_any(data: Any, what: str = "job spec") -> JobSpec | SweepSpec:
    """A job or, for ``kind: sweep``, a sweep, validated where untrusted input enters."""
    if isinstance(data, dict) and data.get("kind") == "sweep":
        return validate_sweep(data, what)
    return validate_spec(data, what)

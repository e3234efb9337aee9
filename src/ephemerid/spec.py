"""JobSpec: what a job is, validated where untrusted input enters.

A spec comes from a YAML/JSON file, a rule template filled from an event, a queue message or
an HTTP body. Validation errors name the field and what to write instead.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ephemerid.errors import SpecError
from ephemerid.sandbox import RESERVED

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_RUNTIME_LIMIT = 7 * 24 * 3600
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_MAX_VARS = 64
ENV_MAX_NAME = 128
ENV_MAX_VALUE = 4096


class JobKind(str, Enum):
    TRAIN = "train"
    PREDICT = "predict"
    # "sweep" is planned: a sweep fans out into train jobs sharing one parent.


class Spot(str, Enum):
    NEVER = "never"
    PREFER = "prefer"
    ONLY = "only"


def parse_duration(value: Any) -> int:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError("write a duration such as 30m, 2h or 90s")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"'{value}' is not a duration: write e.g. 30m, 2h or 90s")
        return int(value)
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    match = _DURATION_RE.match(text)
    if not text or not match:
        raise ValueError(f"'{value}' is not a duration: write e.g. 30m, 2h, 1h30m or 90s")
    d, h, m, s = (int(g) if g else 0 for g in match.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


Seconds = Annotated[int, BeforeValidator(parse_duration), Field(gt=0, le=MAX_RUNTIME_LIMIT)]


class ModelRef(BaseModel):
    """``name@alias`` (e.g. ``churn@production``) or ``name:version`` (e.g. ``churn:3``)."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, Field(pattern=NAME_RE.pattern)]
    alias: Annotated[str | None, Field(pattern=NAME_RE.pattern)] = None
    version: Annotated[int | None, Field(gt=0)] = None

    @model_validator(mode="after")
    def _one_of(self) -> ModelRef:
        if (self.alias is None) == (self.version is None):
            raise ValueError(
                f"model '{self.name}' needs exactly one of alias or version: write "
                "name@alias (e.g. churn@production) or name:version (e.g. churn:3)"
            )
        return self

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        hint = "write name@alias (e.g. churn@production) or name:version (e.g. churn:3)"
        if "@" in text:
            name, _, alias = text.partition("@")
            if NAME_RE.match(name) and NAME_RE.match(alias):
                return cls(name=name, alias=alias)
        elif ":" in text:
            name, _, version = text.partition(":")
            if NAME_RE.match(name) and version.isdigit() and int(version) > 0:
                return cls(name=name, version=int(version))
        raise ValueError(f"'{text}' is not a model reference: {hint}")

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}:{self.version}"


def _model_ref(value: Any) -> Any:
    return ModelRef.parse(value) if isinstance(value, str) else value


class Registration(BaseModel):
    """Where a train job's ``model/`` output is registered, and the alias it gets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=NAME_RE.pattern)]
    alias: Annotated[str | None, Field(pattern=NAME_RE.pattern)] = None


class ComputeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = None
    # GPUs per node; more than one node is a distributed job (the azure-ml backend)
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    skus: list[str] = Field(default_factory=list)
    spot: Spot = Spot.NEVER
    max_runtime: Seconds = 3600


class JobSpec(BaseModel):
    """One job. ``code`` is a local directory or an artifact URI holding ``entrypoint``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind
    name: Annotated[str | None, Field(pattern=NAME_RE.pattern)] = None
    code: Annotated[str, Field(min_length=1)]
    entrypoint: Annotated[str, Field(min_length=1)]
    args: list[str] = Field(default_factory=list)
    inputs: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], str] = Field(
        default_factory=dict
    )
    params: dict[str, Any] = Field(default_factory=dict)
    model: Annotated[ModelRef | None, BeforeValidator(_model_ref)] = None
    register_as: Registration | None = None
    compute: ComputeRequest = Field(default_factory=ComputeRequest)
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=512)] = None
    env: dict[str, str] = Field(default_factory=dict)  # for the entrypoint, in plain text

    @field_validator("env", mode="before")
    @classmethod
    def _check_env(cls, env: Any) -> Any:
        if not isinstance(env, dict):
            return env  # pydantic says it must be a mapping
        if len(env) > ENV_MAX_VARS:
            raise ValueError(f"{len(env)} variables; at most {ENV_MAX_VARS}: pass data as params")
        for name, value in env.items():
            _check_env_var(name, value)
        return env

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        entry = PurePosixPath(self.entrypoint)
        if entry.is_absolute() or ".." in entry.parts or "\\" in self.entrypoint:
            raise ValueError(
                f"entrypoint '{self.entrypoint}' must be a relative path inside code, e.g. train.py"
            )
        if entry.suffix != ".py":
            raise ValueError(f"entrypoint '{self.entrypoint}' must be a Python file (*.py)")
        if self.kind is JobKind.PREDICT and self.model is None:
            raise ValueError("a predict job needs 'model: name@alias' (e.g. churn@production)")
        if self.kind is JobKind.TRAIN and self.model is not None:
            raise ValueError("a train job takes no 'model'; use 'register_as: {name: ...}'")
        if self.kind is JobKind.PREDICT and self.register_as is not None:
            raise ValueError("a predict job registers no model: remove 'register_as'")
        try:
            json.dumps(self.params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params must be plain JSON values: {exc}") from exc
        return self

    @property
    def label(self) -> str:
        return self.name or PurePosixPath(self.entrypoint).stem


def _check_env_var(name: Any, value: Any) -> None:
    if not isinstance(name, str) or not ENV_NAME_RE.match(name) or len(name) > ENV_MAX_NAME:
        raise ValueError(
            f"'{name}' is not a variable name: write letters, digits and _, not starting with "
            f"a digit, at most {ENV_MAX_NAME} characters (e.g. MY_FLAG)"
        )
    if name.startswith("EPHEMERID_") or name in RESERVED:
        raise ValueError(
            f"'{name}' is reserved: the runner sets it (EPHEMERID_*, HOME, TMPDIR, RANK and the "
            "other launcher variables); pick another name"
        )
    if not isinstance(value, str):
        raise ValueError(f'env.{name} must be a string: write it in quotes, e.g. {name}: "1"')
    if "\0" in value or len(value) > ENV_MAX_VALUE:
        raise ValueError(
            f"env.{name} must be text of at most {ENV_MAX_VALUE} characters with no NUL "
            "character: pass bigger data as params or inputs"
        )


def explain(exc: ValidationError, what: str) -> str:
    """Turn pydantic's errors into lines that name the field and the fix."""
    lines = [f"{what} is not valid:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            msg = f"unknown field '{field}': remove it or check its spelling"
        elif kind == "missing":
            msg = f"required field '{field}' is missing: add it"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  - {field}: {msg}")
    return "\n".join(lines)


def validate_spec(data: Any, what: str = "job spec") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{what} must be a mapping of fields, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(explain(exc, what)) from exc


def parse_document(text: str, what: str) -> Any:
    """Parse YAML (a superset of JSON) and say where it broke."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{what} is not valid YAML/JSON{where}: {problem}") from exc


def load_spec(path: Path) -> JobSpec:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file '{path}': {exc.strerror}") from exc
    return validate_spec(parse_document(text, f"spec file '{path}'"), f"spec file '{path}'")

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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ephemerid.batch.spec import BatchSpec
from ephemerid.envs.spec import Environment
from ephemerid.errors import SpecError
from ephemerid.sandbox import RESERVED
from ephemerid.validation import validated

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
MAX_RUNTIME_LIMIT = 7 * 24 * 3600
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_MAX_VARS = 64
ENV_MAX_NAME = 128
ENV_MAX_VALUE = 4096
SKU_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_DOCUMENT_DEPTH = 40  # a request body or spec file, all of it
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_PARAMS_DEPTH = 32
MAX_PARAMS_BYTES = 1024 * 1024  # also bounds the walk over shared YAML aliases


class JobKind(str, Enum):
    TRAIN = "train"
    PREDICT = "predict"
    # a sweep (kind: sweep) is not a JobSpec: ephemerid.sweeps.spec.SweepSpec


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
    if text.isascii() and text.isdigit():
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
            if NAME_RE.match(name) and version.isascii() and version.isdigit() and int(version) > 0:
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


def _sku(value: str) -> str:
    if not SKU_RE.match(value):
        raise ValueError(
            f"'{value:.80}' is not a VM size name: use letters, digits, '_' and '-', "
            "at most 64, e.g. Standard_NC4as_T4_v3"
        )
    return value


def _plain_text(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"'{value!r:.80}' contains control characters (a NUL byte, a newline...)")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL byte, which no process argument can hold")
    return value


PlainText = Annotated[str, AfterValidator(_plain_text)]


class ComputeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = None
    # GPUs per node; more than one node is a distributed job (the azure-ml backend)
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    skus: Annotated[list[Annotated[str, AfterValidator(_sku)]], Field(max_length=32)] = Field(
        default_factory=list
    )
    spot: Spot = Spot.NEVER
    max_runtime: Seconds = 3600
    # local compute only: with fewer GPUs here than asked, run on the CPU (and say so) instead
    # of refusing the job; the cloud backends always rent the GPUs asked
    cpu_fallback: bool = False
    # USD this job may cost: refused at submit when its price x max_runtime (+ the setup
    # allowance) could pass it, or with on_max_cost: cap its max_runtime cut to fit; a running
    # job whose cost reaches it is stopped (docs/cost.md)
    max_cost: Annotated[float | None, Field(gt=0, allow_inf_nan=False)] = None
    on_max_cost: Literal["refuse", "cap"] = "refuse"


SECRET_SHOWN = "***"  # noqa: S105 (what a secret param shows, not a secret)


class JobSpec(BaseModel):
    """One job. ``code`` is a local directory or an artifact URI holding ``entrypoint``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: JobKind
    name: Annotated[str | None, Field(pattern=NAME_RE.pattern)] = None
    code: Annotated[PlainText, Field(min_length=1)]
    entrypoint: Annotated[PlainText, Field(min_length=1)]
    args: list[Annotated[str, AfterValidator(_no_nul)]] = Field(default_factory=list)
    inputs: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], PlainText] = Field(
        default_factory=dict
    )
    params: dict[str, Any] = Field(default_factory=dict)
    # params whose values are stored and shown as ``***``: only the runner gets them (job.json)
    secret_params: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=64
    )
    model: Annotated[ModelRef | None, BeforeValidator(_model_ref)] = None
    register_as: Registration | None = None
    compute: ComputeRequest = Field(default_factory=ComputeRequest)
    idempotency_key: Annotated[PlainText | None, Field(min_length=1, max_length=512)] = None
    env: dict[str, str] = Field(default_factory=dict)  # for the entrypoint, in plain text
    # the packages or image the code needs; None: the runner's own environment
    environment: Environment | None = None
    batch: BatchSpec | None = None  # a predict job's harness (ephemerid.batch); None: as found

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

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint(cls, value: str) -> str:
        entry = PurePosixPath(value)
        if entry.is_absolute() or ".." in entry.parts or "\\" in value:
            raise ValueError(
                f"entrypoint '{value}' must be a relative path inside code, e.g. train.py"
            )
        if entry.suffix != ".py":
            raise ValueError(f"entrypoint '{value}' must be a Python file (*.py)")
        return value

    @field_validator("params")
    @classmethod
    def _params(cls, value: dict[str, Any]) -> dict[str, Any]:
        problem = measure(value, MAX_PARAMS_DEPTH, MAX_PARAMS_BYTES)
        if problem:
            raise ValueError(f"params are {problem}: pass big data as inputs, not params")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params must be plain JSON values: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.kind is JobKind.PREDICT and self.model is None:
            raise ValueError("a predict job needs 'model: name@alias' (e.g. churn@production)")
        if self.kind is JobKind.TRAIN and self.model is not None:
            raise ValueError("a train job takes no 'model'; use 'register_as: {name: ...}'")
        if self.kind is JobKind.PREDICT and self.register_as is not None:
            raise ValueError("a predict job registers no model: remove 'register_as'")
        if self.kind is not JobKind.PREDICT and self.batch is not None:
            raise ValueError("'batch' is for predict jobs only: remove it or use kind: predict")
        unknown = [name for name in self.secret_params if name not in self.params]
        if unknown:
            raise ValueError(f"secret_params names {', '.join(unknown)}, not in params")
        return self

    def without_secrets(self) -> JobSpec:
        """This spec with each of ``secret_params`` shown as ``***``: what a record keeps."""
        if not self.secret_params:
            return self
        hidden = {n: SECRET_SHOWN if n in self.secret_params else v for n, v in self.params.items()}
        return self.model_copy(update={"params": hidden})

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


def validate_spec(data: Any, what: str = "job spec") -> JobSpec:
    return validated(JobSpec, data, what)


def parse_document(text: str, what: str) -> Any:
    """Parse YAML (a superset of JSON) and say where it broke; too big or too deep is refused
    before any object is built (the YAML composer recurses once per level)."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise SpecError(f"{what} is {len(text)} characters; at most {MAX_DOCUMENT_BYTES}")
    try:
        _check_yaml_nesting(text, what)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{what} is not valid YAML/JSON{where}: {problem}") from exc


def read_document(path: Path) -> Any:
    """The YAML/JSON document in spec file ``path``; SpecError says what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file '{path}': {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec file '{path}' is not UTF-8 text: {exc.reason}") from exc
    return parse_document(text, f"spec file '{path}'")


def load_spec(path: Path) -> JobSpec:
    return validate_spec(read_document(path), f"spec file '{path}'")


# -- limits: how big and how deep untrusted data may be, checked without recursion -----------

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[][{}]")
_OPEN = frozenset(b"[{")


def check_nesting(raw: bytes, what: str, limit: int = MAX_DOCUMENT_DEPTH) -> None:
    """Refuse JSON text nested deeper than ``limit`` before it is parsed (``json`` recurses)."""
    depth = 0
    for found in _BRACKET.finditer(_JSON_STRING.sub(b'""', raw)):
        depth += 1 if found.group()[0] in _OPEN else -1
        if depth > limit:
            raise SpecError(f"{what} is nested deeper than {limit} levels: flatten it")


def _check_yaml_nesting(text: str, what: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # the event parser is iterative
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DOCUMENT_DEPTH:
                raise SpecError(
                    f"{what} is nested deeper than {MAX_DOCUMENT_DEPTH} levels: flatten it"
                )
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def measure(value: Any, max_depth: int, max_bytes: int) -> str:
    """What makes ``value`` too deep or too big (about its JSON size); "" when it fits.

    Walked without recursion, and stopped at the first limit passed, so parts shared by YAML
    aliases count each time they are reached without ever being expanded in full.
    """
    size, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
            children = list(item.values()) if isinstance(item, dict) else item
            keys = item.keys() if isinstance(item, dict) else ()
            size += 2 + sum(len(str(k)) + 4 for k in keys) + len(children)
            stack.extend((child, depth + 1) for child in children)
        else:
            size += len(item) + 2 if isinstance(item, str) else 8
        if size > max_bytes:
            return f"larger than {max_bytes} bytes"
    return ""

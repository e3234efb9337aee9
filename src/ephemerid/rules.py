"""ephemerid.yaml: which blob paths, queues and cron schedules make which jobs.

A rule has one trigger (``blob``, ``queue`` or ``schedule``) and a ``job`` template whose strings
may name event values in braces: ``{name}`` and any other field captured from the blob pattern,
``{blob}``, ``{uri}``, ``{etag}``, ``{date}``, ``{time}``, ``{rule}``; for schedules,
``{scheduled}``. Values are inserted as plain data, then the result is validated as a JobSpec
(or, for ``kind: sweep``, a SweepSpec, whose trial gets the defaults).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ephemerid.artifacts import safe_key
from ephemerid.budgets import Budget
from ephemerid.errors import RuleError, SpecError, UnsafeName
from ephemerid.spec import NAME_RE, JobSpec, parse_document
from ephemerid.sweeps.spec import SweepSpec, validate_any
from ephemerid.validation import explain, explain_errors

EVENT_FIELDS = frozenset({"blob", "uri", "etag", "date", "time", "rule", "scheduled"})
_FORMATTER = string.Formatter()


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_RE.pattern)
    blob: str | None = None
    queue: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    schedule: str | None = None
    job: dict[str, Any]

    @model_validator(mode="after")
    def _one_trigger(self) -> Rule:
        given = [k for k in ("blob", "queue", "schedule") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"rule '{self.name}' needs exactly one of blob, queue or schedule "
                f"(it has {', '.join(given) or 'none'})"
            )
        return self

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value.split()) != 6 or not croniter.is_valid(value, second_at_beginning=True):
            raise ValueError(
                f"schedule '{value}' is not a 6-field NCRONTAB expression "
                "(second minute hour day month weekday), e.g. '0 0 2 * * *' for 02:00 daily"
            )
        return value

    @field_validator("blob")
    @classmethod
    def _blob(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            safe_key(_FORMATTER.vformat(value, (), _Placeholders()), what="blob pattern")
        except (UnsafeName, ValueError) as exc:
            reason = str(exc).rpartition(": ")[2]
            raise ValueError(f"blob pattern '{value}' is refused: {reason}") from None
        if "/" not in value or "{" in value.split("/", 1)[0]:
            raise ValueError(
                f"blob pattern '{value}' must start with a fixed container, "
                "e.g. incoming/train/{name}.csv"
            )
        return value

    def fields(self) -> set[str]:
        return set(_pattern_fields(self.blob)) if self.blob else set()


class RulesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    defaults: dict[str, Any] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    budgets: list[Budget] = Field(default_factory=list)  # spend limits (ephemerid.budgets)


@dataclass(frozen=True)
class Match:
    rule: Rule
    spec: JobSpec | SweepSpec


class Rules:
    """Loaded, checked rules. ``base`` resolves relative ``code`` directories."""

    def __init__(self, parsed: RulesFile, base: Path, source: str = "ephemerid.yaml") -> None:
        self.parsed = parsed
        self.base = base
        self.source = source
        names = [r.name for r in parsed.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RuleError(f"{source}: rule names must be unique; repeated: {', '.join(dupes)}")
        self._patterns = {r.name: _compile(r.blob) for r in parsed.rules if r.blob}
        for rule in parsed.rules:
            self._check_template(rule)

    @classmethod
    def load(cls, path: Path) -> Rules:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(f"cannot read rules file '{path}': {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise RuleError(f"rules file '{path}' is not UTF-8 text: {exc.reason}") from exc
        return cls.parse(text, base=path.resolve().parent, source=str(path))

    @classmethod
    def parse(cls, text: str, *, base: Path, source: str = "ephemerid.yaml") -> Rules:
        try:
            data = parse_document(text, source)
        except SpecError as exc:
            raise RuleError(str(exc)) from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RuleError(f"{source} must be a mapping with 'rules:', got {type(data).__name__}")
        try:
            return cls(RulesFile.model_validate(data), base, source)
        except ValidationError as exc:
            raise RuleError(explain(exc, source)) from exc

    @property
    def all(self) -> list[Rule]:
        return list(self.parsed.rules)

    def match_blob(self, key: str, *, uri: str, etag: str, at: datetime) -> list[Match]:
        """Specs for every blob rule ``key`` matches. Refuses names that escape a prefix."""
        safe_key(key)
        matches = []
        for rule in self.parsed.rules:
            pattern = self._patterns.get(rule.name)
            found = pattern.fullmatch(key) if pattern else None
            if found:
                values = {**found.groupdict(), "blob": key, "uri": uri, "etag": etag}
                matches.append(Match(rule, self.fill(rule, values, at)))
        return matches

    def queue_rule(self, queue: str) -> Rule | None:
        return next((r for r in self.parsed.rules if r.queue == queue), None)

    def due(self, now: datetime, catch_up: timedelta) -> Iterator[tuple[Rule, datetime]]:
        """For each schedule, its latest time in (now - catch_up, now]: fire once, keyed by it."""
        for rule in self.parsed.rules:
            if rule.schedule:
                it = croniter(
                    rule.schedule, now + timedelta(microseconds=1), second_at_beginning=True
                )
                last = it.get_prev(datetime)
                if now - last < catch_up:
                    yield rule, last

    def next_times(self, after: datetime) -> list[tuple[Rule, datetime]]:
        """Each schedule's next time strictly after ``after``, to the second (6-field cron)."""
        return [
            (rule, croniter(rule.schedule, after, second_at_beginning=True).get_next(datetime))
            for rule in self.parsed.rules
            if rule.schedule
        ]

    def fill(self, rule: Rule, values: dict[str, str], at: datetime) -> JobSpec | SweepSpec:
        return validate_any(self._filled(rule, values, at), f"job made by rule '{rule.name}'")

    def _filled(self, rule: Rule, values: dict[str, str], at: datetime) -> dict[str, Any]:
        event = {
            "date": at.strftime("%Y-%m-%d"),
            "time": at.strftime("%H%M%S"),
            "rule": rule.name,
            **values,
        }
        job = self._template(rule)
        filled = _fill(job, event)
        trial = filled.get("trial") if filled.get("kind") == "sweep" else None
        target = trial if isinstance(trial, dict) else filled  # a sweep's code is its trial's
        code = target.get("code")
        if isinstance(code, str) and "://" not in code and not Path(code).is_absolute():
            target["code"] = str((self.base / code).resolve())
        if isinstance(filled.get("name"), str):  # a name the event's values break is made valid
            filled["name"] = job_name(filled["name"])
        return filled

    def _template(self, rule: Rule) -> dict[str, Any]:
        """The rule's job with the defaults under it: under a sweep's trial for a sweep."""
        if rule.job.get("kind") == "sweep":
            trial = rule.job.get("trial")
            trial = merge(self.parsed.defaults, trial) if isinstance(trial, dict) else trial
            return {**rule.job, "trial": trial}
        return merge(self.parsed.defaults, rule.job)

    def _check_template(self, rule: Rule) -> None:
        allowed = EVENT_FIELDS | rule.fields()
        for text in _strings(merge(self.parsed.defaults, rule.job)):
            for name in _template_fields(text, rule.name):
                if name not in allowed:
                    raise RuleError(
                        f"{self.source}: rule '{rule.name}' uses '{{{name}}}', which its event "
                        f"does not provide; use one of: {', '.join(sorted(allowed))}"
                    )
        self._check_job(rule, allowed)

    def _check_job(self, rule: Rule, fields: frozenset[str] | set[str]) -> None:
        """The template, filled with stand-ins, must be a JobSpec (a queue rule's, the part of
        one it gives: the message brings the rest), so a typo stops the start, not each event.
        A field whose value comes from the event (``kind: "{kind}"``) is left to the event."""
        job = self._template(rule)
        from_event = {k for k, v in job.items() if any("{" in text for text in _strings(v))}
        filled = self._filled(rule, {name: "placeholder" for name in fields}, datetime.now(UTC))
        try:
            (SweepSpec if filled.get("kind") == "sweep" else JobSpec).model_validate(filled)
        except ValidationError as exc:
            errors = [
                e
                for e in exc.errors()
                if not (rule.queue and e["type"] == "missing")
                and not (e["loc"] and e["loc"][0] in from_event)
            ]
            if errors:
                lines = explain_errors(errors)
                raise RuleError(
                    f"{self.source}: rule '{rule.name}' makes no valid job:\n" + "\n".join(lines)
                ) from exc


class _Placeholders(dict[str, str]):
    """Fills every {field} with a harmless stand-in, to check the literal parts of a pattern."""

    def __missing__(self, key: str) -> str:
        return "value"


def _template_fields(text: str, rule: str) -> Iterator[str]:
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise RuleError(f"rule '{rule}': bad braces in '{text}': {exc}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise RuleError(
                f"rule '{rule}': '{{{name}}}' in '{text}' must be a plain name like {{name}}"
            )
        yield name


def _pattern_fields(pattern: str) -> list[str]:
    return [name for _, name, _, _ in _FORMATTER.parse(pattern) if name]


def _compile(pattern: str) -> re.Pattern[str]:
    regex = ""
    for literal, name, _, _ in _FORMATTER.parse(pattern):
        regex += re.escape(literal)
        if name:
            regex += f"(?P<{name}>[^/]+)"
    return re.compile(regex)


def job_name(text: str) -> str:
    """``text`` as a valid job name: each run of other characters becomes '-', at most 64."""
    if NAME_RE.match(text):
        return text
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:64].rstrip("-._")
    return name or "job"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _fill(value: Any, event: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format_map(event)
    if isinstance(value, dict):
        return {k: _fill(v, event) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, event) for v in value]
    return value


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged

"""What to deploy to the prediction service: model versions and the share of traffic each gets.

A ``SplitPlan`` is one model's versions with whole-number weights that sum to 100, resolved from
the registry before any ARM call: an alias becomes the version it points at now, and a version
or alias that does not exist is ``NotFound`` naming what does. ``plan_for`` takes the entries as
``(ref or version, weight)``; ``DeployRequest`` is the HTTP body of ``POST /api/serving/deploy``
(``{"model": "tabular@production"}``, or ``{"model": "tabular", "split":
"tabular:3=90,tabular:4=10"}``), in the split syntax of ``EPHEMERID_SERVING_SPLIT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ephemerid.errors import BadInput
from ephemerid.models import ModelRegistry
from ephemerid.serving import plan as serving_plan
from ephemerid.spec import NAME_RE, ModelRef

Entry = tuple[ModelRef | str | int, int]  # "tabular:3", "tabular@staging", 3 or a ModelRef


@dataclass(frozen=True)
class Share:
    version: int
    weight: int


@dataclass(frozen=True)
class SplitPlan:
    model: str
    shares: tuple[Share, ...]

    def describe(self) -> str:
        return ",".join(f"{self.model}:{s.version}={s.weight}" for s in self.shares)


class DeployRequest(BaseModel):
    """``POST /api/serving/deploy``: a model ref (all traffic) or a model name and a split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, max_length=200)
    split: str = Field("", max_length=2000)
    image: str = Field("", max_length=500)  # empty: the image the app runs now

    @classmethod
    def parse(cls, body: bytes) -> DeployRequest:
        try:
            return cls.model_validate_json(body or b"{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise BadInput(
                f"the deploy request is not valid ({problems}): send "
                '{"model": "name@alias"} or {"model": "name", "split": "name:3=90,name:4=10"}'
            ) from None

    def entries(self) -> tuple[str, list[Entry]]:
        """(the model's name, its entries) this request names."""
        if not self.split:
            ref = _ref(self.model)
            return ref.name, [(ref, 100)]
        name = self.model.partition("@")[0].partition(":")[0]
        return name, list(parse_split(self.split))


def parse_split(text: str) -> list[Entry]:
    """``tabular:3=90,tabular@staging=10`` in the service's own split syntax (one parser:
    ``ephemerid.serving.plan.parse_split``), with the whole-number weights Container Apps takes;
    ``plan_for`` checks that they sum to 100."""
    found: list[Entry] = []
    for lane in serving_plan.parse_split(text):
        if not lane.weight.is_integer():
            raise BadInput(
                f"weight {lane.weight:g} of {lane.ref}: Container Apps takes whole-number "
                "weights that sum to 100, e.g. tabular:3=90,tabular:4=10"
            )
        found.append((lane.ref, int(lane.weight)))
    return found


def plan_for(registry: ModelRegistry, model: str, entries: Sequence[Entry]) -> SplitPlan:
    """The versions ``entries`` name, checked against the registry; nothing is deployed yet."""
    if not NAME_RE.match(model):
        raise BadInput(f"model '{model[:60]}' is not a model name (letters, digits, . _ -)")
    if not entries:
        raise BadInput("the split is empty: name at least one version with weight 100")
    shares: dict[int, int] = {}
    for target, weight in entries:
        ref = _as_ref(model, target)
        if ref.name != model:
            raise BadInput(
                f"'{ref.name}' is not '{model}': one prediction service serves one model's "
                "versions; deploy another model to its own service"
            )
        version = registry.resolve(ref).version  # NotFound names the versions there are
        if version in shares:
            raise BadInput(f"version {version} of '{model}' is named twice in the split")
        if not 0 <= weight <= 100:
            raise BadInput(f"weight {weight} of {ref} is not a whole number from 0 to 100")
        shares[version] = weight
    total = sum(shares.values())
    if total != 100:
        raise BadInput(f"the split's weights sum to {total}, not 100: {shares}")
    return SplitPlan(model, tuple(Share(v, w) for v, w in shares.items()))


def _as_ref(model: str, target: ModelRef | str | int) -> ModelRef:
    if isinstance(target, ModelRef):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        if target < 1:
            raise BadInput(f"version {target} of '{model}' is not a version (1 or more)")
        return ModelRef(name=model, version=target)
    return _ref(str(target))


def _ref(text: str) -> ModelRef:
    try:
        return ModelRef.parse(text)
    except ValueError as exc:
        raise BadInput(str(exc)) from None

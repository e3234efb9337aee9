"""Which versions serve which share of the traffic: the split, resolved, and one pick per request.

``parse_split("tabular:3=90,tabular@candidate=10")`` reads a split (versions or aliases, with
weights); ``plan_split(models, text)`` resolves its aliases to versions now: the pure function a
redeploy calls when a model is promoted (the Azure side sets one revision per version with
these weights). ``pick`` chooses a lane for one request: by the hash of its route key when the
caller gives one (the same key always lands on the same lane), else at random.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from ephemerid.errors import BadInput
from ephemerid.models import ModelRegistry, ModelVersion
from ephemerid.spec import ModelRef

_HASH_SPAN = float(2**64)


@dataclass(frozen=True)
class Lane:
    """One part of a split: a version or an alias, and its weight (any positive number)."""

    ref: ModelRef
    weight: float


def parse_split(text: str) -> list[Lane]:
    """``ref=weight,ref=weight``; BadInput naming the part that is wrong."""
    lanes = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ref_text, sep, weight_text = part.rpartition("=")
        if not sep:
            raise BadInput(
                f"split part '{part}' has no weight: write ref=weight, e.g. tabular:3=90"
            )
        try:
            ref = ModelRef.parse(ref_text.strip())
        except ValueError as exc:
            raise BadInput(f"split part '{part}': {exc}") from None
        try:
            weight = float(weight_text)
        except ValueError:
            weight = -1.0
        if not weight > 0 or weight == float("inf"):
            raise BadInput(f"split part '{part}': the weight must be a number more than 0")
        lanes.append(Lane(ref, weight))
    if not lanes:
        raise BadInput("the split names no version: write e.g. tabular:3=90,tabular:4=10")
    if len({str(lane.ref) for lane in lanes}) != len(lanes):
        raise BadInput(f"the split '{text}' names a version or alias twice")
    return lanes


def lanes_for(model: str, split: str) -> list[Lane]:
    """The service's lanes: the split's, else the one model ref at weight 1."""
    if split:
        return parse_split(split)
    try:
        return [Lane(ModelRef.parse(model), 1.0)]
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def plan_split(models: ModelRegistry, split_text: str) -> list[tuple[ModelVersion, float]]:
    """Each lane of ``split_text`` resolved to its ready version now, with its share (the
    weights normalized to sum to 1). NotFound naming a version or alias that does not exist."""
    lanes = parse_split(split_text)
    total = sum(lane.weight for lane in lanes)
    return [(models.resolve(lane.ref), lane.weight / total) for lane in lanes]


def pick(weights: Sequence[float], route_key: str | None, rng: random.Random) -> int:
    """The index of the lane for one request: sticky by ``route_key``, else drawn from ``rng``."""
    total = sum(weights)
    if route_key:
        digest = hashlib.sha256(route_key.encode()).digest()
        point = int.from_bytes(digest[:8], "big") / _HASH_SPAN * total
    else:
        point = rng.random() * total
    for index, weight in enumerate(weights):
        if point < weight:
            return index
        point -= weight
    return len(weights) - 1

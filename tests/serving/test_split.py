"""A split between versions by weight: proportions, sticky route keys, and the plan a redeploy
reads (plan_split)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ephemerid.errors import BadInput, NotFound
from ephemerid.serving.plan import parse_split, pick, plan_split
from serving.serving import NAME, Registry, rows

REQUESTS = 600


def test_traffic_splits_by_weight_within_tolerance_and_a_route_key_sticks(
    registry: Registry,
) -> None:
    v1 = registry.publish(1.0, alias="production")
    v2 = registry.publish(2.0, alias="candidate")
    with registry.serve(model="", split=f"{NAME}:{v1}=80,{NAME}@candidate=20") as client:
        served = Counter(
            client.predict(rows(1), headers={"x-ephemerid-route-key": f"user-{i}"}).json()[
                "version"
            ]
            for i in range(REQUESTS)
        )
        sticky = {
            client.predict(rows(1), headers={"x-ephemerid-route-key": "user-7"}).headers[
                "x-ephemerid-model-version"
            ]
            for _ in range(30)
        }
        described = client.get(f"/v1/models/{NAME}").json()

    assert set(served) == {v1, v2}
    assert abs(served[v2] / REQUESTS - 0.2) < 0.06  # 600 hashed keys: sd 0.016
    assert len(sticky) == 1
    assert {v["version"]: v["weight"] for v in described["versions"]} == {v1: 0.8, v2: 0.2}


def test_without_a_route_key_requests_are_drawn_by_weight() -> None:
    rng = random.Random(20)
    drawn = Counter(pick([90, 10], None, rng) for _ in range(10_000))

    assert abs(drawn[1] / 10_000 - 0.1) < 0.02


def test_plan_split_resolves_aliases_to_versions_with_their_shares(registry: Registry) -> None:
    registry.publish(1.0)
    v2 = registry.publish(2.0, alias="production")
    v3 = registry.publish(3.0, alias="candidate")

    plan = plan_split(registry.models, f"{NAME}@production=90,{NAME}@candidate=10")

    assert [(version.version, share) for version, share in plan] == [(v2, 0.9), (v3, 0.1)]
    with pytest.raises(NotFound, match="no alias 'nosuch'"):
        plan_split(registry.models, f"{NAME}@nosuch=1")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("scaler:1", "has no weight"),
        ("scaler:1=0", "more than 0"),
        ("scaler:1=lots", "more than 0"),
        ("scaler=5", "not a model reference"),
        ("scaler:1=5,scaler:1=5", "twice"),
        ("", "names no version"),
    ],
)
def test_a_malformed_split_is_refused_naming_the_part(text: str, named: str) -> None:
    with pytest.raises(BadInput, match=named):
        parse_split(text)

"""The deployment's region: only one where Flex Consumption runs, refused before anything is made.

Flex Consumption (the function app's plan) runs in some regions only; a deployment elsewhere
creates the resource groups, identities and storage, then fails on the plan. ``main.bicep``
constrains ``location`` with ``@allowed`` (ARM refuses any other value before it creates
anything, and azd offers only those in its prompt), and what names a region (azd's parameters
file, azure.yaml, docs/deploy.md) must agree with that list.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from test_deploy_modules import closing, without_comments

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
APP_CALL = "    location: location\n    tags: tags\n    token: token\n    functionIdentityName"


def decorators_of(text: str, param: str) -> str:
    """The decorators written directly above ``param <name>``."""
    match = re.search(rf"^param {param}\b", text, re.M)
    assert match, f"main.bicep declares no parameter {param}"
    lines = text[: match.start()].rstrip("\n").split("\n")
    above: list[str] = []
    depth = 0
    for line in reversed(lines):
        depth += line.count(")") + line.count("]") - line.count("(") - line.count("[")
        if depth == 0 and not line.startswith("@"):
            break
        above.insert(0, line)
    return "\n".join(above)


def allowed_locations(main: str) -> list[str]:
    decorators = decorators_of(main, "location")
    at = decorators.find("@allowed(")
    if at < 0:
        return []
    opened = decorators.index("[", at)
    return re.findall(r"'([^']+)'", decorators[opened : closing(decorators, opened) + 1])


def documented_locations(docs: str) -> list[str]:
    line = next((x for x in docs.splitlines() if x.startswith("Allowed regions:")), "")
    return re.findall(r"`([a-z0-9]+)`", line)


def locations_named_in(doc: Any) -> list[str]:
    """Every value under a key naming a location, anywhere in a YAML document."""
    if isinstance(doc, dict):
        return [
            v
            for k, value in doc.items()
            for v in ([value] if "location" in str(k).lower() else locations_named_in(value))
        ]
    if isinstance(doc, list):
        return [v for item in doc for v in locations_named_in(item)]
    return []


def region_problems(main: str, parameters: str, azure_yaml: str, docs: str, app: str) -> list[str]:
    found = []
    allowed = allowed_locations(main)
    if not allowed:
        return ["main.bicep does not constrain location with @allowed"]
    for name in allowed:
        if not re.fullmatch(r"[a-z]+[0-9]?", name):
            found.append(f"'{name}' is not an Azure region name (lower case, no spaces)")
    if len(set(allowed)) != len(allowed):
        found.append("a region is listed twice in @allowed")
    if "azd: { type: 'location' }" not in decorators_of(main, "location"):
        found.append("location is not marked as azd's location parameter")
    if documented_locations(docs) != allowed:
        found.append("docs/deploy.md's 'Allowed regions:' differ from main.bicep's @allowed")

    value = json.loads(parameters)["parameters"]["location"]["value"]
    given = re.fullmatch(r"\$\{AZURE_LOCATION(?:=([^}]*))?\}", value)
    if not given:
        found.append(f"main.parameters.json passes location {value!r}, not azd's AZURE_LOCATION")
    elif given.group(1) and given.group(1) not in allowed:
        found.append(f"main.parameters.json defaults location to {given.group(1)!r}, not allowed")
    for name in locations_named_in(yaml.safe_load(azure_yaml)):
        if name not in allowed:
            found.append(f"azure.yaml names location {name!r}, not allowed")

    module = main[main.index("module app ") :]
    module = module[: closing(module, module.index("{")) + 1]
    if not re.search(r"\n\s*location: location\n", module):
        found.append("the app module is not given the constrained location")
    plan = re.search(r"^resource (\w+) 'Microsoft\.Web/serverfarms@[^']+' = \{", app, re.M)
    if not plan:
        return [*found, "app.bicep has no Flex Consumption plan: the parser lost it"]
    body = app[plan.end() - 1 : closing(app, plan.end() - 1) + 1]
    if "tier: 'FlexConsumption'" not in body or not re.search(r"\n\s*location: location\n", body):
        found.append("the Flex Consumption plan is not placed at the constrained location")
    return found


def files() -> dict[str, str]:
    return {
        "main": without_comments((INFRA / "main.bicep").read_text()),
        "parameters": (INFRA / "main.parameters.json").read_text(),
        "azure_yaml": (ROOT / "azure.yaml").read_text(),
        "docs": (ROOT / "docs" / "deploy.md").read_text(),
        "app": without_comments((INFRA / "modules" / "app.bicep").read_text()),
    }


def test_location_is_constrained_to_flex_consumption_regions_everywhere_it_is_named() -> None:
    given = files()

    assert "eastus" in allowed_locations(given["main"])
    assert region_problems(**given) == []


@pytest.mark.parametrize(
    ("file", "mutation", "expected"),
    [
        ("main", ("@allowed([", "@description(["), "does not constrain location"),
        ("main", ("  'westus3'\n", "  'westus3'\n  'moonbase1'\n"), "differ from main.bicep"),
        ("main", ("  'eastus'\n", "  'East US'\n"), "'East US' is not an Azure region name"),
        ("main", ("@metadata({ azd: { type: 'location' } })\n", ""), "azd's location parameter"),
        ("docs", ("`westeurope`", "`westeurope2`"), "differ from main.bicep"),
        ("parameters", ("${AZURE_LOCATION}", "${AZURE_LOCATION=moonbase1}"), "not allowed"),
        ("parameters", ("${AZURE_LOCATION}", "eastus"), "not azd's AZURE_LOCATION"),
        (
            "azure_yaml",
            ("name: ephemerid\n", "name: ephemerid\nlocation: moonbase1\n"),
            "azure.yaml",
        ),
        (
            "main",
            (APP_CALL, APP_CALL.replace("location: location", "location: 'eastus'")),
            "app module",
        ),
    ],
)
def test_a_region_outside_the_list_or_a_list_that_disagrees_turns_the_check_red(
    file: str, mutation: tuple[str, str], expected: str
) -> None:
    given = files()
    old, new = mutation
    assert old in given[file]
    given[file] = given[file].replace(old, new, 1)

    found = region_problems(**given)

    assert any(expected in problem for problem in found), found

"""Module calls in the Bicep checked the way the Bicep compiler checks them (no compiler runs here).

Each ``module x 'modules/y.bicep' = { params: {...} }`` must pass only parameters ``y.bicep``
declares (an unknown one is error BCP037, even for a conditional module) and every parameter it
declares without a default (BCP035); each ``x.outputs.name`` must be an output ``y.bicep``
declares (BCP053). docs/deploy.md lists what this covers and what only a real compile would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

INFRA = Path(__file__).resolve().parents[1] / "infra"
MODULE = re.compile(r"^module\s+(\w+)\s+'([^']+)'\s*=", re.M)
PARAM = re.compile(r"^param\s+(\w+)\s+([\w.]+\??)(\s*=)?", re.M)
OUTPUT = re.compile(r"^output\s+(\w+)\s", re.M)


def without_comments(text: str) -> str:
    return re.sub(r"(?<!:)//.*", "", text)


def closing(text: str, opened: int) -> int:
    """Index of the bracket that closes the one at ``opened`` (strings skipped)."""
    depth, quoted = 0, False
    for i in range(opened, len(text)):
        char = text[i]
        if char == "'" and text[i - 1] != "\\":
            quoted = not quoted
        elif not quoted and char in "{[(":
            depth += 1
        elif not quoted and char in "}])":
            depth -= 1
            if depth == 0:
                return i
    raise AssertionError(f"unbalanced brackets from {text[opened : opened + 60]!r}")


def top_level(body: str) -> dict[str, int]:
    """The keys of the object literal ``body`` (``{...}``), not those of objects inside it, each
    with the index just after its colon."""
    keys, depth, quoted = {}, 0, False
    for i, char in enumerate(body):
        if char == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif char in "{[(":
            depth += 1
        elif char in "}])":
            depth -= 1
        elif depth == 1 and (i == 0 or body[i - 1] in "{\n,"):
            match = re.match(r"\s*(\w+)\s*:", body[i:])
            if match:
                keys.setdefault(match.group(1), i + match.end())
    return keys


def top_level_keys(body: str) -> set[str]:
    return set(top_level(body))


@dataclass(frozen=True)
class Call:
    caller: str
    symbol: str
    path: Path
    params: frozenset[str]


def calls(name: str, text: str) -> list[Call]:
    found = []
    for match in MODULE.finditer(text):
        start = text.index("{", match.end())
        body = text[start : closing(text, start) + 1]
        params: set[str] = set()
        at = re.search(r"\n\s*params\s*:\s*\{", body)
        if at:
            opened = body.index("{", at.start())
            params = top_level_keys(body[opened : closing(body, opened) + 1])
        path = (INFRA / name).parent / match.group(2)
        found.append(Call(name, match.group(1), path, frozenset(params)))
    return found


def declared(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(every parameter, those without a default, outputs) that a module declares."""
    text = without_comments(path.read_text())
    params = {m.group(1) for m in PARAM.finditer(text)}
    required = {
        m.group(1) for m in PARAM.finditer(text) if not m.group(3) and not m.group(2).endswith("?")
    }
    return params, required, {m.group(1) for m in OUTPUT.finditer(text)}


def problems(name: str, text: str) -> list[str]:
    """What a compile would refuse in ``text`` (the file ``name`` under infra/)."""
    found = []
    symbols = {}
    for call in calls(name, text):
        assert call.path.is_file(), f"{name}: module {call.symbol} names no file {call.path}"
        params, required, outputs = declared(call.path)
        symbols[call.symbol] = (call.path.name, outputs)
        for unknown in sorted(call.params - params):
            found.append(f"{name}: module {call.symbol} passes '{unknown}', undeclared (BCP037)")
        for missing in sorted(required - call.params):
            found.append(f"{name}: module {call.symbol} lacks required '{missing}' (BCP035)")
    for match in re.finditer(r"\b(\w+)\.outputs\.(\w+)", text):
        symbol, output = match.groups()
        if symbol in symbols and output not in symbols[symbol][1]:
            module = symbols[symbol][0]
            found.append(f"{name}: {symbol}.outputs.{output} is not an output of {module}")
    return found


def bicep_files() -> list[str]:
    return sorted(p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.bicep"))


@pytest.mark.parametrize("name", bicep_files())
def test_every_module_call_passes_what_the_module_declares(name: str) -> None:
    assert problems(name, without_comments((INFRA / name).read_text())) == []


def test_main_calls_every_module() -> None:
    called = {
        c.path.name
        for c in calls("main.bicep", without_comments((INFRA / "main.bicep").read_text()))
    }
    assert called == {p.name for p in (INFRA / "modules").glob("*.bicep")}


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            (
                "    tags: tags\n    token: token\n    workspaceName",
                "    tags: tags\n    tokn: token\n    workspaceName",
            ),
            "passes 'tokn', undeclared",
        ),
        (
            (
                "    clusterSku: amlClusterSku\n",
                "    clusterSku: amlClusterSku\n    colour: 'blue'\n",
            ),
            "passes 'colour', undeclared",
        ),
        (("    maxNodes: amlMaxNodes\n", ""), "lacks required 'maxNodes'"),
        (
            (
                "app.outputs.storageAccountName\n    appInsightsId",
                "app.outputs.storageName\n    appInsightsId",
            ),
            "app.outputs.storageName is not an output",
        ),
    ],
)
def test_a_mutated_module_call_turns_the_check_red(
    mutation: tuple[str, str], expected: str
) -> None:
    text = without_comments((INFRA / "main.bicep").read_text())
    old, new = mutation
    assert old in text
    found = problems("main.bicep", text.replace(old, new, 1))
    assert any(expected in problem for problem in found), found

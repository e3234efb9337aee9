"""A VM body checked key by key against azure-mgmt-compute's own ``VirtualMachine`` model.

azure-vm sends ARM a raw dict, so nothing in Python catches a misspelled key, and the SDK's
models do not either: ``VirtualMachine(body)`` keeps a key it does not know as it is (the models
of azure-mgmt-compute 39 are mappings over the JSON), so comparing a round trip proves nothing.
``body_problems`` walks the model instead: every key of the body must be a REST field of the
model at that place (``properties.networkProfile.networkInterfaceConfigurations[0]...``), one
the caller may send (not read-only), a string where the model names an enum must be one of its
values, and every value that is a model is walked in turn, through lists and dicts of models.
The simulator refuses a PUT with any problem (400 naming the paths), so every test that
provisions checks the body the backend really sends.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Any

# Enums the SDK lists that are not the service's whole list: VM sizes are far more than it names.
OPEN_ENUMS = frozenset({"VirtualMachineSizeTypes"})


def body_problems(body: dict[str, Any]) -> list[str]:
    """What in ``body`` the SDK's ``VirtualMachine`` model does not accept from a caller."""
    from azure.mgmt.compute.models import VirtualMachine

    return _walk(VirtualMachine(body), "")


def _walk(model: Any, path: str) -> list[str]:
    fields = {rf._rest_name: (attr, rf) for attr, rf in type(model)._attr_to_rest_field.items()}
    problems = []
    for key in model:  # the JSON keys as sent
        where = f"{path}.{key}" if path else key
        if key not in fields:
            near = _near(key, list(fields))
            hint = f" (did you mean '{near}'?)" if near else ""
            problems.append(f"{where}: not a field of {type(model).__name__}{hint}")
            continue
        attr, rest_field = fields[key]
        visibility = rest_field._visibility
        if visibility is not None and "create" not in visibility:
            problems.append(f"{where}: read-only in {type(model).__name__}; ARM sets it")
            continue
        value = getattr(model, attr)
        problems.extend(_enum_problem(model, attr, value, where) + _walk_value(value, where))
    return problems


def _enum_problem(model: Any, attr: str, value: Any, path: str) -> list[str]:
    """A string where the model names an enum (``priority``: Regular, Low, Spot) must be one of
    its values; ARM reads them without regard to case."""
    from azure.mgmt.compute import models

    annotation = str(_annotations(type(model)).get(attr, ""))
    names = re.findall(r"_models\.(\w+)", annotation)
    kinds = [getattr(models, n, None) for n in names]
    enum = next((k for k in kinds if isinstance(k, type) and issubclass(k, Enum)), None)
    if enum is None or enum.__name__ in OPEN_ENUMS or not isinstance(value, str):
        return []
    allowed = [str(member.value) for member in enum]
    if value.lower() in (a.lower() for a in allowed):
        return []
    return [f"{path}: '{value}' is not one of {', '.join(allowed)}"]


def _annotations(kind: type) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for base in reversed(kind.__mro__):
        found.update(getattr(base, "__annotations__", {}))
    return found


def _walk_value(value: Any, path: str) -> list[str]:
    if hasattr(type(value), "_attr_to_rest_field"):
        return _walk(value, path)
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _walk_value(item, f"{path}[{i}]")]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _walk_value(item, f"{path}.{key}")]
    return []


def _near(key: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    return close[0] if close else ""

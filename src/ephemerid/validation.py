"""Untrusted documents made into models: pydantic's errors turned into lines that name the field
and the fix (a job spec, a sweep, a rule)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticSerializationError

from ephemerid.errors import SpecError

M = TypeVar("M", bound=BaseModel)


def explain(exc: ValidationError, what: str) -> str:
    """Turn pydantic's errors into lines that name the field and the fix."""
    return "\n".join([f"{what} is not valid:", *explain_errors(exc.errors())])


def explain_errors(errors: list[ErrorDetails]) -> list[str]:
    """One line per problem pydantic found, each naming its field."""
    lines = []
    for err in errors:
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            msg = f"unknown field '{field}': remove it or check its spelling"
        elif kind == "missing":
            msg = f"required field '{field}' is missing: add it"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        lines.append(f"  - {field}: {msg}")
    return lines


def validated(model: type[M], data: Any, what: str) -> M:
    """``data`` as a ``model`` that can be stored; SpecError naming each problem otherwise."""
    if not isinstance(data, dict):
        raise SpecError(f"{what} must be a mapping of fields, got {type(data).__name__}")
    try:
        spec = model.model_validate(data)
        spec.model_dump_json()  # it must be storable: a lone surrogate (\ud800) is not text
    except ValidationError as exc:
        raise SpecError(explain(exc, what)) from exc
    except (UnicodeError, PydanticSerializationError) as exc:
        raise SpecError(
            f"{what} holds a string that is not valid Unicode (a lone surrogate such as "
            "\\ud800): write the text itself, or a whole surrogate pair"
        ) from exc
    return spec

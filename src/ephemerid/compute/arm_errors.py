"""Reading Azure Resource Manager answers: the error objects in them, and whether to retry.

Every ARM-backed adapter (azure-vm, azure-ml) turns an SDK exception into a sentence with these.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


def error_tree(exc: Exception) -> Iterator[dict[str, Any]]:
    """Every error object in an ARM answer: ``error`` and, recursively, its ``details``."""
    try:
        body = json.loads(exc.response.text())  # type: ignore[attr-defined]
    except Exception:  # no response, or not JSON: nothing to read
        return
    stack = [body.get("error")] if isinstance(body, dict) else []
    while stack:
        error = stack.pop()
        if isinstance(error, dict):
            yield error
            stack.extend(error.get("details") or [])


def transient(exc: Exception) -> bool:
    """Worth retrying: throttling, server errors, timeouts, lost connections, failed LROs."""
    from azure.core.exceptions import HttpResponseError

    if not isinstance(exc, HttpResponseError):
        return True  # ServiceRequestError, ServiceResponseError, polling errors
    status = exc.status_code or 0
    return status in (200, 201, 202, 408, 429) or status >= 500


def describe(exc: Exception) -> str:
    errors = list(error_tree(exc))
    if errors:
        return "; ".join(f"{e.get('code')}: {e.get('message', '')}"[:300] for e in errors)
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {str(exc)[:300]}"

"""One table from the Azure SDKs' exceptions to ephemerid's (httpx's ``map_httpcore_exceptions``).

Every Azure adapter wraps its SDK calls in ``sdk_errors``::

    with sdk_errors(f"reading job {job_id}", role="Storage Table Data Contributor"):
        entity = client.get_entity(job_id, ROW)

and gets ``raise <ours>(message naming what) from exc``. Only a definite answer becomes
``NotFound`` (404) or ``Conflict`` (409, 412); a refused identity is ``AccessDenied`` (401, 403);
throttling, server errors, resets and timeouts are ``Unavailable``, which always propagates so the
platform retries. Anything else is the caller's ``default`` (``EphemeridError``, or
``ComputeError`` for a compute backend).

``error_tree``, ``describe``, ``transient`` and ``retry_after_s`` read an ARM answer (its error
objects, its ``Retry-After``), for the messages and the retry loops of the compute backends.
Nothing here imports an Azure SDK until an exception has to be read.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from ephemerid.errors import AccessDenied, Conflict, EphemeridError, NotFound, Unavailable

# The SDK's own reading of an answer, by class (azure.core.exceptions), most specific first.
EXCEPTION_MAP: tuple[tuple[str, type[EphemeridError]], ...] = (
    ("ResourceNotFoundError", NotFound),
    ("ResourceExistsError", Conflict),
    ("ResourceModifiedError", Conflict),
    ("ClientAuthenticationError", AccessDenied),
    ("ServiceRequestError", Unavailable),  # no answer: DNS, refused, reset, connect timeout
    ("ServiceResponseError", Unavailable),  # the answer broke off: reset, read timeout
    ("IncompleteReadError", Unavailable),
)
# Any other HttpResponseError, by its status.
STATUS_MAP: dict[int, type[EphemeridError]] = {
    404: NotFound,
    409: Conflict,
    412: Conflict,
    401: AccessDenied,
    403: AccessDenied,
    408: Unavailable,
    429: Unavailable,
}
# Not from the SDK, but from the socket under it.
OS_MAP: tuple[tuple[type[BaseException], type[EphemeridError]], ...] = (
    (ConnectionError, Unavailable),
    (TimeoutError, Unavailable),
)

# ARM error codes that mean: the same request may succeed if sent again (busy, an internal fault).
RETRYABLE_CODES = frozenset(
    {
        "RetryableError",
        "RetryableErrorDueToAnotherOperation",
        "InternalExecutionError",
        "InternalOperationError",
        "InternalServerError",
        "ServerTimeout",
        "GatewayTimeout",
        "TooManyRequests",
        "AnotherOperationInProgress",
    }
)

ADVICE: dict[type[EphemeridError], str] = {
    NotFound: "it does not exist",
    Conflict: "it exists already or changed meanwhile: read it again",
    AccessDenied: "the identity is refused: grant it {role} (infra/roles.json)",
    Unavailable: "the service is unavailable now; this is transient: the event is retried",
}


def error_class(exc: BaseException, default: type[EphemeridError]) -> type[EphemeridError]:
    """Which of ours ``exc`` is: the SDK's class first, then the HTTP status, then ``default``."""
    sdk = _sdk()
    for name, ours in EXCEPTION_MAP:
        if sdk is not None and isinstance(exc, getattr(sdk, name)):
            return ours
    status = status_of(exc)
    if status is not None:
        return STATUS_MAP.get(status, Unavailable if status >= 500 else default)
    for kind, ours in OS_MAP:
        if isinstance(exc, kind):
            return ours
    return default


def is_sdk_error(exc: BaseException) -> bool:
    """An Azure SDK exception, or a socket error under one: what ``sdk_errors`` maps."""
    sdk = _sdk()
    if sdk is not None and isinstance(exc, sdk.AzureError):
        return True
    return isinstance(exc, tuple(kind for kind, _ in OS_MAP))


def _sdk() -> Any:
    """``azure.core.exceptions``, or None without azure-core (then no exception is the SDK's)."""
    try:
        from azure.core import exceptions
    except ImportError:
        return None
    return exceptions


def translate(
    exc: BaseException,
    what: str,
    *,
    default: type[EphemeridError] = EphemeridError,
    role: str = "",
) -> EphemeridError:
    """``exc`` as ours: ``<what> failed: <why> (HTTP <status> <SDK detail>)``."""
    ours = error_class(exc, default)
    advice = ADVICE.get(ours, "").format(role=role or "a role that allows it")
    why = f"{advice} " if advice else ""
    detail, status = describe(exc), status_of(exc)
    if status and f"HTTP {status}" not in detail:
        detail = f"HTTP {status} {detail}"
    return ours(f"{what} failed: {why}({detail})")


@contextlib.contextmanager
def sdk_errors(
    what: str, *, default: type[EphemeridError] = EphemeridError, role: str = ""
) -> Iterator[None]:
    """Raise ours from any Azure SDK (or socket) exception in the block; ours pass through."""
    try:
        yield
    except EphemeridError:
        raise
    except Exception as exc:
        if not is_sdk_error(exc):
            raise
        raise translate(exc, what, default=default, role=role) from exc


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) and status else None


def error_code(exc: BaseException) -> str:
    """The service's error code (``BlobAlreadyExists``, ``InvalidBlobType``), or ''."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


# -- reading ARM answers -------------------------------------------------------------------------


def error_tree(exc: BaseException) -> Iterator[dict[str, Any]]:
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


def transient(exc: BaseException) -> bool:
    """Worth sending again: throttling, server errors, timeouts, lost connections, an ARM error
    code that says so (``RETRYABLE_CODES``, also on a long-running operation), and a 409 on a
    DELETE (another operation on the resource is in progress). A long-running operation that
    failed with any other code (or was cancelled) is a definite answer, not transient."""
    from azure.core.exceptions import HttpResponseError

    if not isinstance(exc, HttpResponseError):
        return True  # ServiceRequestError, ServiceResponseError, polling errors
    status = exc.status_code or 0
    if status in (408, 429) or status >= 500:
        return True
    codes = {str(error.get("code", "")) for error in error_tree(exc)}
    if codes & RETRYABLE_CODES:
        return True
    if status == 409 and request_method(exc) == "DELETE":
        return True
    return status in (200, 201, 202) and not codes  # a failed operation that says nothing more


def retry_after_s(exc: BaseException) -> float | None:
    """The seconds an answer's ``Retry-After`` (or ``retry-after-ms``) asks for, or None."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    lower = {str(k).lower(): str(v) for k, v in dict(headers).items()}
    for name, scale in (
        ("retry-after", 1.0),
        ("retry-after-ms", 1e-3),
        ("x-ms-retry-after-ms", 1e-3),
    ):
        value = lower.get(name)
        if not value:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    return None


def request_method(exc: BaseException) -> str:
    """The HTTP method of the request an answer is to (``GET`` for a long-running operation's
    poll), or ''."""
    request = getattr(getattr(exc, "response", None), "request", None)
    return str(getattr(request, "method", "")).upper()


def describe(exc: BaseException) -> str:
    errors = list(error_tree(exc))
    if errors:
        return "; ".join(f"{e.get('code')}: {e.get('message', '')}"[:300] for e in errors)
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {str(exc)[:300]}"

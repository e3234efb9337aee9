"""One error root for ephemerid, mapped to exit codes and HTTP statuses at the edges.

Every message says what was wrong and what to do, and names the field, blob or job.
"""

from __future__ import annotations


class EphemeridError(Exception):
    """Root of every error ephemerid raises on purpose."""

    exit_code = 1


class BadInput(EphemeridError):
    """The user's input (spec, rule, event, CLI flag) is wrong. Nothing was rented."""

    exit_code = 2


class SpecError(BadInput):
    """A job spec failed validation; the message names each field and the fix."""


class RuleError(BadInput):
    """The rules file (ephemerid.yaml) is malformed, or an event cannot fill a rule."""


class OverBudget(BadInput):
    """A budget (ephemerid.yaml ``budgets:``, ``on_exceed: refuse``) has no room for the job."""


class UnsafeName(BadInput):
    """A blob name or path tries to escape its prefix (.., absolute, backslash, control chars)."""


class NotFound(EphemeridError):
    """A job, model, or artifact that was asked for does not exist."""

    exit_code = 2


class Conflict(EphemeridError):
    """A compare-and-swap lost: the record changed since it was read."""


class ContractError(EphemeridError):
    """A job.json or result.json that this ephemerid cannot read: another contract version, or
    malformed. The message names the file, the field or both versions, and what to install."""


class AccessDenied(EphemeridError):
    """The service refused the caller's identity (401/403): the message names the role to grant."""


class Unavailable(EphemeridError):
    """A service failed transiently (429, 5xx, a reset or timeout): retry, never treat as absent.

    It always propagates out of a function, so the platform redelivers the event.
    """


class CapacityUnavailable(EphemeridError):
    """No compute can be placed right now; the job waits and says so (not a failure).

    ``retry_after_s``, when a backend gives it, is how long the job waits before the next try.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ComputeError(EphemeridError):
    """A compute backend failed in a way that is not about capacity."""


class MissingExtra(EphemeridError):
    """An optional dependency is not installed; the message names the pip command."""

    exit_code = 2


def require_extra(module: str, extra: str) -> None:
    """Raise MissingExtra naming the extra to install if ``module`` cannot be imported."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # a parent package (``azure``) is missing
        found = None
    if found is None:
        raise MissingExtra(f"this needs the '{module}' package: pip install 'ephemerid[{extra}]'")

"""Who is looking at the dashboard, and the CSRF check on its two mutations.

Two gates, one question (``caller_of(request)``: a Caller, or None for a 401):

- ``TokenGate`` (``eph ui``): a random token printed in the URL. The first request carries it as
  ``?token=``; the answer sets it as a cookie (HttpOnly, SameSite=Strict) and sends the browser
  on to the same page without it in the address. A request with neither is refused (401).
- ``CallerGate`` (the function app): the Functions host has already checked the function key or
  App Service authentication, and the caller is the one ``functions.callers`` names. A function
  key travels in ``?code=``, which every link and poll then carries along.

CSRF: a random value in a cookie (SameSite=Strict) and the same value in each form; a POST whose
two differ is refused (403). It needs no state on the server, so it holds across instances.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

from starlette.requests import Request

from ephemerid.functions.callers import Caller

TOKEN_COOKIE = "eph_ui"  # noqa: S105 (a cookie's name, not a secret)
TOKEN_PARAM = "token"  # noqa: S105 (a parameter's name, not a secret)
CSRF_COOKIE = "eph_csrf"
CSRF_FIELD = "csrf"


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class TokenGate:
    """``eph ui``: whoever holds the printed token is ``caller``."""

    token: str
    caller: Caller
    keep: tuple[str, ...] = ()  # query parameters every link carries on

    def caller_of(self, request: Request) -> Caller | None:
        given = request.cookies.get(TOKEN_COOKIE) or request.query_params.get(TOKEN_PARAM) or ""
        return self.caller if given and _same(given, self.token) else None

    def entering(self, request: Request) -> bool:
        """The first request, with the token in its address: set the cookie, drop the token."""
        given = request.query_params.get(TOKEN_PARAM)
        return given is not None and _same(given, self.token)


@dataclass(frozen=True)
class CallerGate:
    """The function app: the host let the request in; ``caller`` is who sent it."""

    caller: Caller
    keep: tuple[str, ...] = field(default=("code",))

    def caller_of(self, request: Request) -> Caller | None:
        return self.caller

    def entering(self, request: Request) -> bool:
        return False


Gate = TokenGate | CallerGate


def csrf_of(request: Request) -> tuple[str, bool]:
    """This browser's CSRF value, and whether it is new (and must be set as a cookie)."""
    known = request.cookies.get(CSRF_COOKIE, "")
    if len(known) >= 16:
        return known, False
    return secrets.token_urlsafe(24), True


def csrf_ok(request: Request, given: str) -> bool:
    known = request.cookies.get(CSRF_COOKIE, "")
    return bool(known) and bool(given) and _same(given, known)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())

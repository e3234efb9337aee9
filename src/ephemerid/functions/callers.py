"""Who is calling an HTTP function: the owner of the jobs it submits, and what it may see.

In order:

- behind App Service authentication (``WEBSITE_AUTH_ENABLED``, which App Service sets), the
  Entra principal in the ``X-MS-CLIENT-PRINCIPAL-ID`` / ``-NAME`` headers, which App Service
  sets and strips from outside requests: ``entra:<id>``; admin if the principal's claims hold
  the ``ephemerid.admin`` app role. Without that setting these headers are never trusted;
- the function key the request carries (``x-functions-key`` or ``code``), by its name in the
  key ring (``EPHEMERID_KEYS_FILE``, the dev host's ``devhost-keys.json``): ``key:<name>``;
  the ring's master key is the admin, ``admin``. A key not in the ring (in Azure the functions
  are not told which key matched) is named by its fingerprint, ``key:<sha256 prefix>``.

The host has already refused a request without a valid key, so there is no anonymous caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import azure.functions as func

KEYS_FILE_SETTING = "EPHEMERID_KEYS_FILE"
AUTH_ENABLED_SETTING = "WEBSITE_AUTH_ENABLED"
ADMIN_ROLE = "ephemerid.admin"
KEY_HEADER = "x-functions-key"
KEY_PARAM = "code"


@dataclass(frozen=True)
class Caller:
    name: str
    admin: bool = False

    def sees(self, owner: str) -> bool:
        """Whether this caller may read, or cancel, what ``owner`` submitted."""
        return self.admin or owner == self.name


ADMIN = Caller("admin", admin=True)  # the master key: no function key is named so (``key:``)


@dataclass(frozen=True)
class KeyRing:
    """Named function keys, and the master key (the admin's)."""

    function_keys: Mapping[str, str] = field(default_factory=dict)
    master: str = ""

    @classmethod
    def read(cls, path: Path | str | None) -> KeyRing:
        """The ring in a ``host.json``-style keys file; an empty ring if there is none."""
        try:
            data = json.loads(Path(path).read_text()) if path else {}
        except (OSError, ValueError):
            return cls()
        data = data if isinstance(data, dict) else {}
        named = data.get("functionKeys")
        named = named if isinstance(named, dict) else {}
        keys = {str(k): v for k, v in named.items() if isinstance(v, str) and v}
        master = data.get("masterKey")
        return cls(keys, master if isinstance(master, str) else "")

    def is_master(self, given: str) -> bool:
        return bool(self.master) and _same(given, self.master)

    def name_of(self, given: str) -> str | None:
        """The name of the function key ``given``; None if it is none of them."""
        return next((name for name, key in self.function_keys.items() if _same(given, key)), None)

    def takes(self, given: str) -> bool:
        return self.is_master(given) or self.name_of(given) is not None


def caller_of(
    req: func.HttpRequest, ring: KeyRing, trust_principal: bool, keyless: Caller
) -> Caller:
    """Who sent ``req``; ``keyless`` when it carries neither a trusted principal nor a key."""
    if trust_principal:
        principal = req.headers.get("x-ms-client-principal-id") or req.headers.get(
            "x-ms-client-principal-name"
        )
        if principal:
            return Caller(f"entra:{principal}", _has_admin_role(req))
    given = req.headers.get(KEY_HEADER) or req.params.get(KEY_PARAM) or ""
    if not given:
        return keyless
    if ring.is_master(given):
        return ADMIN
    name = ring.name_of(given)
    if name:
        return Caller(f"key:{name}")
    return Caller(f"key:{hashlib.sha256(given.encode()).hexdigest()[:16]}")


def trusts_principal(env: Mapping[str, str]) -> bool:
    return env.get(AUTH_ENABLED_SETTING, "").strip().lower() == "true"


def _has_admin_role(req: func.HttpRequest) -> bool:
    raw = req.headers.get("x-ms-client-principal") or ""
    try:
        principal = json.loads(base64.b64decode(raw))
        claims = principal.get("claims") or []
        types = {"roles", "role", principal.get("role_typ")}
        return any(
            isinstance(c, dict) and c.get("typ") in types and c.get("val") == ADMIN_ROLE
            for c in claims
        )
    except (binascii.Error, ValueError, AttributeError, TypeError):
        return False


def _same(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode(), key.encode())

"""Refusals, kept for their senders: ``rejected/<source>/<id>.json`` in the bucket.

A request that cannot become a job is recorded once with the reason (``eph rejected``,
``GET /api/rejected``) and not retried: retrying bad input only costs money. Only the first
``BODY_KEPT`` characters of the body are kept, with the values of JSON fields that look secret
(a name holding ``key``, ``secret``, ``token``, ``password``..., or listed in the body's
``secret_params``) replaced by ``***``; each refusal names its sender (``owner``), who alone
sees it over HTTP.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.errors import BadInput
from ephemerid.record import utcnow

REJECTED = "rejected"
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")
BODY_KEPT = 200
_SCRUB_DEPTH = 16
_SECRET_WORDS = r"key|secret|token|passw|pwd|credential|connection|sas|signature|auth"  # noqa: S105
_SECRET_NAME = re.compile(_SECRET_WORDS, re.IGNORECASE)
_SECRET_TEXT = re.compile(
    rf"((?:{_SECRET_WORDS})[^\s\"':=]*[\"']?\s*[:=]\s*)[^\s,}}&]+", re.IGNORECASE
)


@dataclass(frozen=True)
class Rejection:
    source: str
    id: str
    reason: str
    at: str
    body: str
    owner: str = ""  # older refusals have none: only an admin sees them

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def record(
    artifacts: ArtifactStore,
    source: str,
    request_id: str,
    error: BadInput,
    body: bytes | str,
    owner: str = "",
) -> Rejection:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    kept = redacted(text)
    rejection = Rejection(source, request_id, str(error), utcnow().isoformat(), kept, owner)
    sender = f"{_SAFE_ID.sub('_', owner)}/" if owner else ""
    name = _SAFE_ID.sub("_", request_id)[:200]
    key = f"{REJECTED}/{_SAFE_ID.sub('_', source)}/{sender}{name}.json"
    put_bytes(artifacts, key, json.dumps(rejection.to_json()).encode())
    return rejection


def listing(
    artifacts: ArtifactStore, limit: int = 100, owner: str | None = None
) -> list[Rejection]:
    """The newest ``limit`` refusals, newest first; only ``owner``'s when one is given."""
    found = [
        Rejection(**json.loads(get_bytes(artifacts, item.key)))
        for item in artifacts.list(f"{REJECTED}/")
    ]
    mine = [r for r in found if owner is None or r.owner == owner]
    return sorted(mine, key=lambda r: r.at, reverse=True)[:limit]


def redacted(text: str) -> str:
    """At most ``BODY_KEPT`` characters of ``text``, secret-looking JSON values as ``***``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # too deep to parse: a refusal of its own
        data = None
    if isinstance(data, dict):
        declared = data.get("secret_params")
        secret = {str(n) for n in declared} if isinstance(declared, list) else set()
        text = json.dumps(_scrub(data, secret))
    else:  # not JSON, or cut short: hide whatever follows a secret-looking name
        text = _SECRET_TEXT.sub(lambda m: f"{m.group(1)}***", text)
    return text[:BODY_KEPT]


def _scrub(value: Any, secret: set[str], depth: int = 0) -> Any:
    if depth > _SCRUB_DEPTH and isinstance(value, dict | list):
        return "..."  # only the first BODY_KEPT characters are kept anyway
    if isinstance(value, dict):
        return {
            k: "***"
            if (k in secret or _SECRET_NAME.search(str(k)))
            else _scrub(v, secret, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v, secret, depth + 1) for v in value]
    return value

"""Job requests from apps (queue messages, HTTP bodies): parsed once, refused once with a reason.

A request is a JSON ``JobSpec``; ``idempotency_key`` is optional (default: the message id). A
request that cannot become a job is recorded under ``rejected/<source>/<id>.json`` in the bucket
with the reason, so the sender can read why (``eph rejected``, ``GET /api/rejected``), and is
not retried: retrying bad input only costs money.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.errors import BadInput, SpecError
from ephemerid.record import utcnow
from ephemerid.rules import Rules, merge
from ephemerid.spec import JobSpec, validate_spec

MAX_BODY_BYTES = 256 * 1024
REJECTED = "rejected"
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


def parse_request(
    body: bytes | str, *, what: str, defaults: dict[str, Any] | None = None
) -> JobSpec:
    """The JobSpec in ``body``; SpecError naming what is wrong otherwise."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise SpecError(f"{what} is {len(raw)} bytes; a job request is at most {MAX_BODY_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{what} must be a JSON object (a job spec), got {type(data).__name__}")
    return validate_spec(merge(defaults or {}, data), what)


def queue_defaults(rules: Rules | None, queue: str) -> dict[str, Any]:
    """The ``job`` template of the rule for ``queue``, if there is one, under every message."""
    rule = rules.queue_rule(queue) if rules else None
    return dict(rule.job) if rule else {}


@dataclass(frozen=True)
class Rejection:
    source: str
    id: str
    reason: str
    at: str
    body: str


def record_rejection(
    artifacts: ArtifactStore, source: str, request_id: str, error: BadInput, body: bytes | str
) -> Rejection:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    rejection = Rejection(source, request_id, str(error), utcnow().isoformat(), text[:2000])
    key = f"{REJECTED}/{_SAFE_ID.sub('_', source)}/{_SAFE_ID.sub('_', request_id)[:200]}.json"
    put_bytes(artifacts, key, json.dumps(rejection.__dict__).encode())
    return rejection


def list_rejections(artifacts: ArtifactStore, limit: int = 100) -> list[Rejection]:
    found = [
        Rejection(**json.loads(get_bytes(artifacts, item.key)))
        for item in artifacts.list(f"{REJECTED}/")
    ]
    return sorted(found, key=lambda r: r.at, reverse=True)[:limit]

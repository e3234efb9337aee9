"""Refusals, kept for their senders: ``rejected/<source>/<id>.json`` in the bucket.

A request that cannot become a job is recorded once with the reason (``eph rejected``,
``GET /api/rejected``) and not retried: retrying bad input only costs money.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.errors import BadInput
from ephemerid.record import utcnow

REJECTED = "rejected"
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class Rejection:
    source: str
    id: str
    reason: str
    at: str
    body: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def record(
    artifacts: ArtifactStore, source: str, request_id: str, error: BadInput, body: bytes | str
) -> Rejection:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    rejection = Rejection(source, request_id, str(error), utcnow().isoformat(), text[:2000])
    key = f"{REJECTED}/{_SAFE_ID.sub('_', source)}/{_SAFE_ID.sub('_', request_id)[:200]}.json"
    put_bytes(artifacts, key, json.dumps(rejection.to_json()).encode())
    return rejection


def listing(artifacts: ArtifactStore, limit: int = 100) -> list[Rejection]:
    """The newest ``limit`` refusals, newest first."""
    found = [
        Rejection(**json.loads(get_bytes(artifacts, item.key)))
        for item in artifacts.list(f"{REJECTED}/")
    ]
    return sorted(found, key=lambda r: r.at, reverse=True)[:limit]

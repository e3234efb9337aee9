"""Event Grid deliveries to the blob trigger's webhook, in either schema Event Grid sends.

Event Grid schema: a JSON array of events with ``eventType``, ``subject``, ``data``. CloudEvents
1.0: one object or an array, with ``type``, ``source``, ``subject``, ``data``, ``specversion``.
A blob event's subject is ``/blobServices/default/containers/<container>/blobs/<path>``, which
names the blob as ``<container>/<path>``: the key in the bucket. The subscription handshake is
a ``Microsoft.EventGrid.SubscriptionValidationEvent`` (answered with its code) in the Event Grid
schema, and an HTTP ``OPTIONS`` request in CloudEvents (answered in the web server).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, ValidationError

from ephemerid.errors import BadInput

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
_SUBJECT = "/blobServices/default/containers/"


class _EventGridEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    eventType: str
    subject: str = ""
    data: dict[str, Any] | None = None


class _CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: str
    source: str
    specversion: str
    subject: str | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class StorageEvent:
    """One event of a delivery: its type, the blob it names, or a validation code."""

    id: str
    type: str
    key: str = ""
    etag: str = ""
    validation_code: str = ""


def parse_delivery(body: bytes) -> list[StorageEvent]:
    """The events in a webhook delivery; BadInput naming what is wrong otherwise."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadInput(f"the delivery is not JSON: {exc}") from exc
    items = payload if isinstance(payload, list) else [payload]
    if not items or not all(isinstance(item, dict) for item in items):
        raise BadInput("a delivery is a JSON array of events (or one CloudEvent object)")
    return [_event(item, n) for n, item in enumerate(items)]


def _event(item: dict[str, Any], n: int) -> StorageEvent:
    cloud = "specversion" in item
    try:
        if cloud:
            ce = _CloudEvent.model_validate(item)
            event_id, kind, subject, data = ce.id, ce.type, ce.subject or "", ce.data or {}
        else:
            eg = _EventGridEvent.model_validate(item)
            event_id, kind, subject, data = eg.id, eg.eventType, eg.subject, eg.data or {}
    except ValidationError as exc:
        schema = "CloudEvent" if cloud else "Event Grid event"
        fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
        raise BadInput(f"event {n} is not a valid {schema}: check {fields}") from exc
    if kind == VALIDATION:
        return StorageEvent(event_id, kind, validation_code=str(data.get("validationCode", "")))
    if kind != BLOB_CREATED:
        return StorageEvent(event_id, kind)
    key = _key_of(subject, str(data.get("url", "")))
    if not key:
        raise BadInput(f"event {n} ({event_id}) names no blob: no blob subject and no data.url")
    return StorageEvent(event_id, kind, key=key, etag=str(data.get("eTag", "")).strip('"'))


def _key_of(subject: str, url: str) -> str:
    """``<container>/<path>`` from the subject, or else from the blob URL's path."""
    if subject.startswith(_SUBJECT) and "/blobs/" in subject:
        container, _, path = subject[len(_SUBJECT) :].partition("/blobs/")
        return f"{container}/{path}" if container and path else ""
    return unquote(urlparse(url).path).lstrip("/") if url else ""

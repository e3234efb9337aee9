"""Trigger adapters' shared half: turn a blob-created event or a clock tick into service calls.

Idempotency keys: ``blob:<uri>@<etag>#<rule>`` for a blob (a redelivered event, or the same
upload seen twice, names the same job; a new upload of the same name has a new ETag), and
``cron:<rule>@<scheduled time>`` for a schedule (two instances or a restart never fire twice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ephemerid import names
from ephemerid.artifacts import safe_key
from ephemerid.errors import NotFound
from ephemerid.record import JobRecord, utcnow
from ephemerid.rules import Rules
from ephemerid.service import Service, Submitted

log = logging.getLogger("ephemerid")


@dataclass
class Delivery:
    """What one event led to: jobs submitted, or the job whose result it completed."""

    submitted: list[Submitted] = field(default_factory=list)
    completed: JobRecord | None = None


def on_blob_created(
    service: Service, rules: Rules, key: str, etag: str, at: datetime | None = None
) -> Delivery:
    safe_key(key)
    job_id = names.job_of_result(key)
    if job_id:
        try:
            return Delivery(completed=service.complete(job_id))
        except NotFound:
            log.warning("result %s names no known job: ignored (the reaper owns strays)", key)
            return Delivery()
    uri = service.artifacts.uri(key)
    delivery = Delivery()
    for match in rules.match_blob(key, uri=uri, etag=etag, at=at or utcnow()):
        idem = f"blob:{uri}@{etag}#{match.rule.name}"
        source = f"blob {key} (rule {match.rule.name})"
        delivery.submitted.append(service.submit(match.spec, key=idem, source=source))
    return delivery


def fire_schedules(
    service: Service, rules: Rules, now: datetime, catch_up: timedelta = timedelta(hours=1)
) -> list[Submitted]:
    """Submit each schedule's latest due time once; a missed tick is caught up once."""
    fired = []
    for rule, scheduled in rules.due(now, catch_up):
        values = {"scheduled": scheduled.isoformat()}
        spec = rules.fill(rule, values, scheduled)
        idem = f"cron:{rule.name}@{scheduled.isoformat()}"
        fired.append(service.submit(spec, key=idem, source=f"schedule {rule.name}"))
    return fired

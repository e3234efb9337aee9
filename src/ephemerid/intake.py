"""Intake: every event that can become a job, turned into specs and submitted in one place.

- a blob created in the bucket: the rules that match it (``ephemerid.yaml``), or, for a
  ``runs/<job>/result.json``, the completion of that job;
- a schedule tick: each rule's latest due time, once;
- a request from an app (a Service Bus or Storage Queue message, an HTTP body): a JSON
  ``JobSpec``, over the queue rule's ``job`` template.

Idempotency keys: ``blob:<uri>@<etag>#<rule>`` for a blob (a redelivered event, or the same
upload seen twice, names the same job; a new upload of the same name has a new ETag),
``cron:<rule>@<scheduled time>`` for a schedule (two instances or a restart never fire twice),
``<source>:<message id>`` for a message and ``http:<Idempotency-Key>`` for HTTP. A key a sender
writes in its request (``idempotency_key``) is kept in that sender's namespace
(``queue:<key>``, ``servicebus:<key>``, ``http:<key>``: see ``namespace``), so no sender can claim
a schedule's, a blob's or another source's job; an HTTP caller's keys are its own
(``http/<caller>:<key>``).

Owners: a job is owned by who asked for it: the HTTP caller (``key:<name>``, ``entra:<id>``),
the source of a message (``queue``, ``servicebus``: until a message carries a signed sender),
``rule:<name>`` for a blob rule or a schedule. A refusal is recorded under the same owner.

Bad input (``BadInput``) is refused once with its reason, recorded through the service, and not
retried (an HTTP caller also gets it back as a 400); anything else propagates, so the platform
redelivers the event.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ephemerid import names
from ephemerid.artifacts import safe_key
from ephemerid.errors import BadInput, NotFound, SpecError
from ephemerid.names import JOBS_QUEUE
from ephemerid.record import JobRecord, utcnow
from ephemerid.rules import Rules, merge
from ephemerid.service import Service, Submitted
from ephemerid.spec import JobSpec, check_nesting, validate_spec
from ephemerid.sweeps.spec import SweepSpec, validate_any

log = logging.getLogger("ephemerid")
MAX_BODY_BYTES = 256 * 1024


@dataclass
class Delivery:
    """What one event led to: jobs submitted, or the job whose result it completed."""

    submitted: list[Submitted] = field(default_factory=list)
    completed: JobRecord | None = None


@dataclass
class Intake:
    service: Service
    rules: Rules
    jobs_queue: str = JOBS_QUEUE  # the queue the request triggers bind to

    def blob(self, key: str, etag: str | None) -> Delivery:
        """A blob-created event; ``etag`` None takes the blob's own. Refusals are recorded."""
        try:
            if not key:
                raise BadInput("blob event without a blob name: nothing to run")
            etag = etag or self.service.etag_of(key)
            if etag is None:
                raise BadInput(f"blob '{key}' is gone: nothing to run")
            delivery = on_blob_created(self.service, self.rules, key, etag)
        except BadInput as exc:
            self.service.reject("blob", key or "(no name)", exc, key, owner="blob")
            log.warning("refused blob %s: %s", key, exc)
            return Delivery()
        for submitted in delivery.submitted:
            fresh = "new" if submitted.created else "duplicate"
            log.info("blob %s -> job %s (%s)", key, submitted.job.id, fresh)
        return delivery

    def message(self, source: str, message_id: str, body: bytes) -> JobRecord | None:
        """A job request from a queue; None when it was refused (and recorded)."""
        what = f"{source} message {message_id}"
        try:
            spec = parse_request(body, what=what, defaults=self.queue_defaults())
            check_remote_code(spec.trial.code if isinstance(spec, SweepSpec) else spec.code)
            key = f"{source}:{message_id}"
            submitted = self.service.submit(
                spec, key=key, source=what, namespace=namespace(source), owner=source
            )
        except BadInput as exc:
            self.service.reject(source, message_id, exc, body, owner=source)
            log.warning("rejected %s: %s", what, exc)
            return None
        return submitted.job

    def http(
        self, body: bytes, idempotency_key: str | None, caller: str = "", admin: bool = False
    ) -> Submitted:
        """A job request over HTTP from ``caller``, its owner (``admin`` may take any job's
        outputs): BadInput is recorded, then raised for the caller's 400."""
        scope = namespace("http", caller)
        try:
            spec = parse_request(body, what="request body")
            check_remote_code(spec.trial.code if isinstance(spec, SweepSpec) else spec.code)
            key = f"{scope}:{idempotency_key}" if idempotency_key else None
            return self.service.submit(
                spec, key=key, source="http", namespace=scope, owner=caller, admin=admin
            )
        except BadInput as exc:
            request_id = idempotency_key or f"request-{uuid.uuid4()}"
            self.service.reject("http", request_id, exc, body, owner=caller)
            log.warning("refused an HTTP request: %s", exc)
            raise

    def tick(
        self, now: datetime | None = None, catch_up: timedelta = timedelta(hours=1)
    ) -> list[Submitted]:
        """Each schedule's latest due time within ``catch_up`` of ``now``, submitted once."""
        return fire_schedules(self.service, self.rules, now or utcnow(), catch_up)

    def queue_defaults(self) -> dict[str, Any]:
        """The ``job`` template of the rule for the jobs queue, if any, under every message."""
        rule = self.rules.queue_rule(self.jobs_queue) if self.rules else None
        return dict(rule.job) if rule else {}


def namespace(source: str, caller: str | None = None) -> str:
    """Where the idempotency keys a sender writes live: its source, and the caller within it
    when there is one (``queue``, ``http/key:alice``)."""
    return f"{source}/{caller}" if caller else source


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
    uri = service.uri(key)
    delivery = Delivery()
    for match in rules.match_blob(key, uri=uri, etag=etag, at=at or utcnow()):
        idem = f"blob:{uri}@{etag}#{match.rule.name}"
        source = f"blob {key} (rule {match.rule.name})"
        owner = f"rule:{match.rule.name}"
        delivery.submitted.append(service.submit(match.spec, key=idem, source=source, owner=owner))
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
        source = f"schedule {rule.name}"
        fired.append(service.submit(spec, key=idem, source=source, owner=f"rule:{rule.name}"))
    return fired


def parse_request(
    body: bytes | str, *, what: str, defaults: dict[str, Any] | None = None
) -> JobSpec | SweepSpec:
    """The JobSpec (or SweepSpec) in ``body``; SpecError naming what is wrong otherwise."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
    if len(raw) > MAX_BODY_BYTES:
        raise SpecError(f"{what} is {len(raw)} bytes; a job request is at most {MAX_BODY_BYTES}")
    check_nesting(raw, what)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpecError(f"{what} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{what} must be a JSON object (a job spec), got {type(data).__name__}")
    if data.get("kind") == "sweep":  # the queue rule's defaults go under its trial
        trial = data.get("trial")
        if isinstance(trial, dict):
            data = {**data, "trial": merge(defaults or {}, trial)}
        return validate_any(data, what)
    return validate_spec(merge(defaults or {}, data), what)


def check_remote_code(code: str) -> None:
    """Code named by an app must be an artifact: a folder on the host is not the sender's."""
    if "://" not in code:
        raise SpecError(f"code '{code}' must be an artifact URI (upload the code to the bucket)")

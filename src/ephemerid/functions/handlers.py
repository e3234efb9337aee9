"""The functions' bodies: each turns one trigger's event into an intake call and nothing more.

They take the same ``azure.functions`` types in Azure and under ``eph dev``. Bad input is
refused once with a reason (recorded, never retried, by ``ephemerid.intake``); anything else
raises, so the platform retries it (a storage timeout, say), and every retry is harmless
because every step is idempotent.

Each HTTP request has a caller (``ephemerid.functions.callers``), who owns what it submits and
sees only that: another owner's job answers 404, as an unknown one does, so ids do not leak;
an admin sees everything. A request that carries neither a key nor a principal is ``keyless``:
the function app never lets one through (every route needs a key), so it is only ever this
process calling its own handlers (a test, a script), as trusted as the CLI.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from ephemerid.azure.container_app import ContainerAppDeployer
from ephemerid.errors import BadInput, Conflict, NotFound, Unavailable
from ephemerid.functions.callers import Caller, KeyRing, caller_of
from ephemerid.intake import Intake
from ephemerid.names import JOBS_QUEUE
from ephemerid.reads import live_json
from ephemerid.reaper import reap
from ephemerid.record import JobRecord, JobState, utcnow
from ephemerid.rules import Rules
from ephemerid.service import Service

log = logging.getLogger("ephemerid")
LOCAL = Caller("local", admin=True)  # this process calling its own handlers
_WHOLE = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() takes '²', which int() refuses


def _no_serving() -> ContainerAppDeployer:
    raise BadInput(
        "no prediction service to deploy to: set EPHEMERID_SERVING_APP_ID (infra: "
        "enableServing=true; docs/serving-azure.md)"
    )


@dataclass
class Handlers:
    service: Service
    rules: Rules
    jobs_queue: str = JOBS_QUEUE  # the queue the triggers bind to (EPHEMERID_JOBS_QUEUE)
    keys_file: str | None = None  # named keys and the master key (EPHEMERID_KEYS_FILE)
    trust_principal: bool = False  # behind App Service authentication (WEBSITE_AUTH_ENABLED)
    keyless: Caller = LOCAL
    # the prediction service's Container App (POST serving/deploy; functions/serving.py)
    serving: Callable[[], ContainerAppDeployer] = field(default=_no_serving)
    intake: Intake = field(init=False)

    def __post_init__(self) -> None:
        self.intake = Intake(self.service, self.rules, self.jobs_queue)

    # -- storage events ----------------------------------------------------------------------

    def blob_created(self, blob: func.InputStream) -> None:
        self.intake.blob(_blob_key(blob), _event_etag(blob))

    def run_result(self, blob: func.InputStream) -> None:
        self.blob_created(blob)  # a result.json is routed to completion by its key

    # -- job requests from apps --------------------------------------------------------------

    def job_message(self, message: func.ServiceBusMessage) -> None:
        self.intake.message("servicebus", message.message_id or "", message.get_body())

    def job_queue_message(self, message: func.QueueMessage) -> None:
        self.intake.message("queue", message.id or "", message.get_body())

    # -- timer -------------------------------------------------------------------------------

    def tick(self, timer: func.TimerRequest) -> None:
        now = utcnow()
        for submitted in self.intake.tick(now):
            if submitted.created:
                log.info("schedule fired: job %s", submitted.job.id)
        for action in reap(self.service, now):
            log.info("reaper: %s", action)

    # -- HTTP API ----------------------------------------------------------------------------

    def http_submit(self, req: func.HttpRequest) -> func.HttpResponse:
        def submit() -> func.HttpResponse:
            caller = self.caller(req)
            submitted = self.intake.http(
                req.get_body(), req.headers.get("Idempotency-Key"), caller.name, caller.admin
            )
            return _json(submitted.job.to_json(), 201 if submitted.created else 200)

        return _answer(submit)

    def http_list(self, req: func.HttpRequest) -> func.HttpResponse:
        def listing() -> func.HttpResponse:
            state = req.params.get("state")
            try:
                states = [JobState(state.upper())] if state else None
            except ValueError as exc:
                raise BadInput(
                    f"state '{state}' is unknown: use one of "
                    + ", ".join(s.value for s in JobState)
                ) from exc
            caller = self.caller(req)
            jobs = [job for job in self.service.list(states) if caller.sees(job.owner)]
            return _json([job.to_json() for job in jobs])

        return _answer(listing)

    def http_get(self, req: func.HttpRequest) -> func.HttpResponse:
        def get() -> func.HttpResponse:
            job = self._visible(req)  # its progress is read only for a caller who may see it
            return _json(live_json(job, self.service.progress(job)))

        return _answer(get)

    def http_cancel(self, req: func.HttpRequest) -> func.HttpResponse:
        return _answer(lambda: _json(self.service.cancel(self._visible(req).id).to_json()))

    def http_logs(self, req: func.HttpRequest) -> func.HttpResponse:
        def logs() -> func.HttpResponse:
            offset = _int_param(req, "offset")
            job = self._visible(req)
            text = self.service.read_log(job.id, offset)
            headers = {"X-Next-Offset": str(offset + len(text)), "X-Job-State": job.state.value}
            return func.HttpResponse(
                text, status_code=200, headers=headers, mimetype="text/plain", charset="utf-8"
            )

        return _answer(logs)

    def http_rejected(self, req: func.HttpRequest) -> func.HttpResponse:
        def listing() -> func.HttpResponse:
            caller = self.caller(req)
            mine = self.service.rejections(owner=None if caller.admin else caller.name)
            return _json([r.to_json() for r in mine])

        return _answer(listing)

    # -- callers -----------------------------------------------------------------------------

    def caller(self, req: func.HttpRequest) -> Caller:
        return caller_of(req, KeyRing.read(self.keys_file), self.trust_principal, self.keyless)

    def _visible(self, req: func.HttpRequest) -> JobRecord:
        """The job in the route, if this caller may see it; NotFound, as for no job, if not."""
        job_id = req.route_params["id"]
        job = self.service.get(job_id)
        if not self.caller(req).sees(job.owner):
            raise NotFound(f"no job '{job_id}': `eph list` shows the jobs there are")
        return job


def _event_etag(blob: func.InputStream) -> str | None:
    """The event's ETag, if it carries one (never the size: uploads of one size differ)."""
    props: dict[str, Any] = getattr(blob, "blob_properties", None) or {}
    etag = props.get("ETag") or props.get("Etag") or props.get("etag")
    return str(etag).strip('"') if etag else None


def _blob_key(blob: func.InputStream) -> str:
    return blob.name or ""  # none is refused, and recorded, by the intake


def _int_param(req: func.HttpRequest, name: str) -> int:
    raw = req.params.get(name, "0")
    if not _WHOLE.fullmatch(raw):
        raise BadInput(f"query parameter '{name}' must be a whole number (0-9), got '{raw:.40}'")
    return int(raw)


def _json(data: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(data, default=str), status_code=status, mimetype="application/json"
    )


def _answer(handler: Callable[[], func.HttpResponse]) -> func.HttpResponse:
    """Map our errors to HTTP: 400 bad input, 404 unknown, 409 conflict, 503 try again."""
    try:
        return handler()
    except NotFound as exc:
        return _json({"error": str(exc)}, 404)
    except BadInput as exc:
        return _json({"error": str(exc)}, 400)
    except Conflict as exc:
        return _json({"error": str(exc)}, 409)
    except Unavailable as exc:
        return func.HttpResponse(
            json.dumps({"error": str(exc)}),
            status_code=503,
            headers={"Retry-After": "5"},
            mimetype="application/json",
        )

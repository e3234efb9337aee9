"""The functions' bodies: each turns one trigger's event into service calls and nothing more.

They take the same ``azure.functions`` types in Azure and under ``eph dev``. Bad input is
refused once with a reason (recorded, never retried); anything else raises, so the platform
retries it (a storage timeout, say), and every retry is harmless because every step is
idempotent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import azure.functions as func

from ephemerid import names
from ephemerid.errors import BadInput, Conflict, NotFound, SpecError
from ephemerid.events import fire_schedules, on_blob_created
from ephemerid.intake import (
    list_rejections,
    parse_request,
    queue_defaults,
    record_rejection,
)
from ephemerid.names import JOBS_QUEUE
from ephemerid.reaper import reap
from ephemerid.record import JobRecord, JobState, utcnow
from ephemerid.rules import Rules
from ephemerid.service import Service

log = logging.getLogger("ephemerid")


@dataclass
class Handlers:
    service: Service
    rules: Rules
    jobs_queue: str = JOBS_QUEUE  # the queue the triggers bind to (EPHEMERID_JOBS_QUEUE)

    # -- storage events ----------------------------------------------------------------------

    def blob_created(self, blob: func.InputStream) -> None:
        key = _blob_key(blob)
        try:
            delivery = on_blob_created(self.service, self.rules, key, self._etag(key, blob))
        except BadInput as exc:
            record_rejection(self.service.artifacts, "blob", key, exc, key)
            log.warning("refused blob %s: %s", key, exc)
            return
        for submitted in delivery.submitted:
            log.info(
                "blob %s -> job %s (%s)",
                key,
                submitted.job.id,
                "new" if submitted.created else "duplicate",
            )

    def _etag(self, key: str, blob: func.InputStream) -> str:
        """The event's ETag; without one, the blob's own (never its size: uploads differ)."""
        props: dict[str, Any] = getattr(blob, "blob_properties", None) or {}
        etag = props.get("ETag") or props.get("Etag") or props.get("etag")
        if etag:
            return str(etag).strip('"')
        stat = self.service.artifacts.stat(key)
        if stat is None:
            raise BadInput(f"blob '{key}' is gone: nothing to run")
        return stat.etag

    def run_result(self, blob: func.InputStream) -> None:
        self.blob_created(blob)  # a result.json is routed to completion by its key

    # -- job requests from apps --------------------------------------------------------------

    def job_message(self, message: func.ServiceBusMessage) -> None:
        self._request("servicebus", message.message_id or "", message.get_body())

    def job_queue_message(self, message: func.QueueMessage) -> None:
        self._request("queue", message.id or "", message.get_body())

    def _request(self, source: str, message_id: str, body: bytes) -> JobRecord | None:
        try:
            spec = parse_request(
                body,
                what=f"{source} message {message_id}",
                defaults=queue_defaults(self.rules, self.jobs_queue),
            )
            _check_remote_code(spec.code)
            submitted = self.service.submit(
                spec, key=f"{source}:{message_id}", source=f"{source} message {message_id}"
            )
        except BadInput as exc:
            record_rejection(self.service.artifacts, source, message_id, exc, body)
            log.warning("rejected %s message %s: %s", source, message_id, exc)
            return None
        return submitted.job

    # -- timer -------------------------------------------------------------------------------

    def tick(self, timer: func.TimerRequest) -> None:
        now = utcnow()
        for submitted in fire_schedules(self.service, self.rules, now):
            if submitted.created:
                log.info("schedule fired: job %s", submitted.job.id)
        for action in reap(self.service, now):
            log.info("reaper: %s", action)

    # -- HTTP API ----------------------------------------------------------------------------

    def http_submit(self, req: func.HttpRequest) -> func.HttpResponse:
        def submit() -> func.HttpResponse:
            spec = parse_request(req.get_body(), what="request body")
            _check_remote_code(spec.code)
            key = req.headers.get("Idempotency-Key")
            submitted = self.service.submit(spec, key=key and f"http:{key}", source="http")
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
            return _json([job.to_json() for job in self.service.store.list(states)])

        return _answer(listing)

    def http_get(self, req: func.HttpRequest) -> func.HttpResponse:
        return _answer(lambda: _json(self.service.store.get(req.route_params["id"]).to_json()))

    def http_cancel(self, req: func.HttpRequest) -> func.HttpResponse:
        return _answer(lambda: _json(self.service.cancel(req.route_params["id"]).to_json()))

    def http_logs(self, req: func.HttpRequest) -> func.HttpResponse:
        def logs() -> func.HttpResponse:
            job = self.service.store.get(req.route_params["id"])
            offset = _int_param(req, "offset")
            try:
                key = names.run_key(job.id, names.LOG_FILE)
                with self.service.artifacts.open_read(key, offset) as stream:
                    text = stream.read()
            except NotFound:
                text = b""
            headers = {"X-Next-Offset": str(offset + len(text)), "X-Job-State": job.state.value}
            return func.HttpResponse(
                text, status_code=200, headers=headers, mimetype="text/plain", charset="utf-8"
            )

        return _answer(logs)

    def http_rejected(self, req: func.HttpRequest) -> func.HttpResponse:
        return _answer(lambda: _json([r.__dict__ for r in list_rejections(self.service.artifacts)]))


def _check_remote_code(code: str) -> None:
    """Code named by an app must be an artifact: a folder on the host is not the sender's."""
    if "://" not in code:
        raise SpecError(f"code '{code}' must be an artifact URI (upload the code to the bucket)")


def _blob_key(blob: func.InputStream) -> str:
    name = blob.name or ""
    if not name:
        raise BadInput("blob event without a blob name")
    return name


def _int_param(req: func.HttpRequest, name: str) -> int:
    raw = req.params.get(name, "0")
    if not raw.isdigit():
        raise BadInput(f"query parameter '{name}' must be a whole number, got '{raw}'")
    return int(raw)


def _json(data: Any, status: int = 200) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(data, default=str), status_code=status, mimetype="application/json"
    )


def _answer(handler: Any) -> func.HttpResponse:
    """Map our errors to HTTP: 400 bad input, 404 unknown, 409 conflict; the body says why."""
    try:
        return handler()
    except NotFound as exc:
        return _json({"error": str(exc)}, 404)
    except BadInput as exc:
        return _json({"error": str(exc)}, 400)
    except Conflict as exc:
        return _json({"error": str(exc)}, 409)

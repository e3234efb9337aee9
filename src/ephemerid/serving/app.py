"""The HTTP front: keys, limits and bodies checked here, predictions asked of the workers.

Routes: ``POST /v1/models/<name>:predict`` (and ``/v1/models/<name>/versions/<v>:predict`` for a
version being served), ``GET /v1/models/<name>``, ``GET /metrics`` (key needed) and
``GET /healthz`` (no key). Every predict answer carries ``x-ephemerid-model-version``. Errors
are JSON ``{"error": ...}`` with a short reason, never a traceback.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ephemerid.errors import NotFound
from ephemerid.serving import codec
from ephemerid.serving.guard import Keys, RateLimits, given_key, retry_after
from ephemerid.serving.metrics import Metrics
from ephemerid.serving.process import PredictFailed
from ephemerid.serving.router import Router

VERSION_HEADER = "x-ephemerid-model-version"
ROUTE_KEY_HEADER = "x-ephemerid-route-key"


@dataclass
class Limits:
    max_body_bytes: int
    max_rows: int


class Front:
    """The state the routes share; ``arriving`` counts predict requests still being read."""

    def __init__(
        self, router: Router, keys: Keys, rates: RateLimits, limits: Limits, metrics: Metrics
    ) -> None:
        self.router, self.keys, self.rates, self.limits = router, keys, rates, limits
        self.metrics = metrics
        self.arriving = 0
        self.active = 0  # requests being answered (predict and model routes)
        self.last_request = time.monotonic()

    def touch(self) -> None:
        self.last_request = time.monotonic()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


Handler = Callable[[Request], Awaitable[Response]]


def guarded(front: Front, handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
    """``handler`` behind the key and the caller's rate limit; no traceback ever answers."""

    async def route(request: Request) -> Response:
        front.active += 1
        front.touch()
        try:
            caller = front.keys.name_of(given_key(request.headers))
            if caller is None:
                front.metrics.refused(401)
                return _error(
                    401,
                    "no valid key: send it in x-ephemerid-key (or Authorization: Bearer KEY)",
                    {"www-authenticate": "Bearer"},
                )
            wait = front.rates.take(caller)
            if wait > 0:
                front.metrics.refused(429)
                return _error(
                    429,
                    f"key '{caller}' is over its rate limit: retry after {wait:.2f} s",
                    {"retry-after": retry_after(wait)},
                )
            return await handler(request, caller)
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return _error(500, f"the service failed on this request ({type(exc).__name__})")
        finally:
            front.active -= 1
            front.touch()

    return route


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it is over ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def predict_route(front: Front) -> Callable[[Request, str], Awaitable[Response]]:
    async def predict(request: Request, caller: str) -> Response:
        front.arriving += 1
        counted = [True]

        def arrived() -> None:  # once its body is read and checked, or it is refused
            if counted:
                front.arriving -= 1
                counted.clear()

        try:
            return await _predict(front, request, arrived)
        finally:
            arrived()

    return predict


async def _predict(front: Front, request: Request, arrived: Callable[[], None]) -> Response:
    name, version = request.path_params["name"], request.path_params.get("version")
    started = time.perf_counter()
    body = await _body(request, front.limits.max_body_bytes)
    if body is None:
        front.metrics.refused(413)
        return _error(413, f"the body is over {front.limits.max_body_bytes} bytes: split the batch")
    try:
        served = front.router.hold(name, request.headers.get(ROUTE_KEY_HEADER), version)
    except NotFound as exc:
        front.metrics.refused(404)
        return _error(404, str(exc))
    number = served.version.version
    headers = {VERSION_HEADER: str(number)}
    try:
        fields = served.process.fields
        content_type = request.headers.get("content-type", "")
        try:
            table = codec.read_body(body, content_type, fields, front.limits.max_rows)
        except codec.BodyError as exc:
            front.metrics.answered(name, number, exc.status, time.perf_counter() - started, 0)
            return _error(exc.status, str(exc), headers)
        arrived()
        try:
            rows = await served.batcher.predict(table)
        except PredictFailed as exc:
            front.metrics.answered(name, number, 502, time.perf_counter() - started, 0)
            return _error(502, f"the model could not predict: {exc}", headers)
    finally:
        front.router.release(served)
    front.metrics.answered(name, number, 200, time.perf_counter() - started, rows.num_rows)
    if codec.wants_arrow(request.headers.get("accept", "")):
        return Response(codec.to_arrow(rows), media_type=codec.ARROW, headers=headers)
    return Response(codec.to_json(name, number, rows), media_type=codec.JSON, headers=headers)


def model_route(front: Front) -> Callable[[Request, str], Awaitable[Response]]:
    async def describe(request: Request, caller: str) -> Response:
        name = request.path_params["name"]
        lanes = [
            (lane, served)
            for lane, served in zip(front.router.lanes, front.router.current, strict=True)
            if lane.ref.name == name and served is not None
        ]
        if not lanes:
            return _error(404, f"this service serves no model '{name}'")
        total = sum(lane.weight for lane, _ in lanes)
        versions = [
            {
                "version": served.version.version,
                "alias": lane.ref.alias,
                "ref": str(lane.ref),
                "weight": lane.weight / total,
                "input_schema": [f.__dict__ for f in served.process.fields],
            }
            for lane, served in lanes
        ]
        first = versions[0]
        body: dict[str, Any] = {"model": name, **first, "versions": versions}
        return JSONResponse(body, headers={VERSION_HEADER: str(first["version"])})

    return describe


def metrics_route(front: Front) -> Callable[[Request, str], Awaitable[Response]]:
    async def metrics(request: Request, caller: str) -> Response:
        text = front.metrics.text(front.router.predict_calls())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return metrics


def health_route(front: Front) -> Handler:
    async def healthz(request: Request) -> Response:
        versions = front.router.health()
        ok = all(served is not None for served in front.router.current)
        body = {"status": "ok" if ok else "unavailable", "versions": versions}
        return JSONResponse(body, status_code=200 if ok else 503)

    return healthz


def build_app(front: Front, lifespan: Any = None) -> Starlette:
    predict = guarded(front, predict_route(front))
    routes = [
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}/versions/{version:int}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}", guarded(front, model_route(front)), methods=["GET"]),
        Route("/metrics", guarded(front, metrics_route(front)), methods=["GET"]),
        Route("/healthz", health_route(front), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)

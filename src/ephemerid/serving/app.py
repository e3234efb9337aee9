"""The HTTP front: keys, limits and bodies checked here, predictions asked of the workers.

Routes: ``POST /v1/models/<name>:predict`` (and ``/v1/models/<name>/versions/<v>:predict`` for a
version being served; both on ``lean``'s plain-ASGI path), ``GET /v1/models/<name>``,
``GET /metrics`` (key needed) and ``GET /healthz`` (no key). Every predict answer carries
``x-ephemerid-model-version``. Errors are JSON ``{"error": ...}`` with a short reason, never a
traceback.
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
from starlette.types import ASGIApp

from ephemerid.serving.guard import Keys, RateLimits
from ephemerid.serving.lean import ROUTE_KEY_HEADER, VERSION_HEADER, Reply, admit, lean
from ephemerid.serving.metrics import Metrics
from ephemerid.serving.router import Router

__all__ = ["ROUTE_KEY_HEADER", "VERSION_HEADER", "Front", "Limits", "build_app"]


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


def _response(reply: Reply) -> Response:
    return Response(reply.body, reply.status, reply.headers, media_type=reply.media_type)


Handler = Callable[[Request], Awaitable[Response]]


def guarded(front: Front, handler: Callable[[Request, str], Awaitable[Response]]) -> Handler:
    """``handler`` behind the key and the caller's rate limit (``lean.admit``, as the predict
    routes); no traceback ever answers."""

    async def route(request: Request) -> Response:
        front.active += 1
        front.touch()
        try:
            refused = admit(front, dict(request.headers))
            if refused is not None:
                return _response(refused)
            return await handler(request, "")
        except ClientDisconnect:
            return Response(status_code=499)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return _error(500, f"the service failed on this request ({type(exc).__name__})")
        finally:
            front.active -= 1
            front.touch()

    return route


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


def build_app(front: Front, lifespan: Any = None) -> ASGIApp:
    """The predict routes on the lean path (``lean``), the others on Starlette."""
    routes = [
        Route("/v1/models/{name}", guarded(front, model_route(front)), methods=["GET"]),
        Route("/metrics", guarded(front, metrics_route(front)), methods=["GET"]),
        Route("/healthz", health_route(front), methods=["GET"]),
    ]
    return lean(front, Starlette(routes=routes, lifespan=lifespan))

"""The predict routes on plain ASGI: the hot path without Starlette's routing, Request and Response.

``lean(front, app)`` answers ``POST /v1/models/<name>:predict`` and
``/v1/models/<name>/versions/<v>:predict`` itself and hands every other request (and the
lifespan) to ``app``. It makes the same checks, in the same order, as any route of the front:
the key from the raw headers (``guard.given_key``, every key compared in constant time), the
caller's rate limit, the body limit (the declared length, then the bytes read from ``receive``),
the model and version, the body against the model's fields (``codec.read_body``), then the
batcher; errors are ``{"error": ...}`` with a short reason, never a traceback. What it saves is
the per-request cost of the framework's objects: one pass over the headers, the body joined at
most once, the answer encoded once and sent in two ASGI messages.
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from ephemerid.errors import NotFound
from ephemerid.serving import codec
from ephemerid.serving.guard import KEY_HEADERS, given_key, retry_after
from ephemerid.serving.process import PredictFailed

if TYPE_CHECKING:
    from ephemerid.serving.app import Front

VERSION_HEADER = "x-ephemerid-model-version"
ROUTE_KEY_HEADER = "x-ephemerid-route-key"
_PREDICT = re.compile(r"/v1/models/([^/]+):predict")
_VERSIONED = re.compile(r"/v1/models/([^/]+)/versions/([0-9]+):predict")
# the request headers the predict path reads; the first of each name counts (as Starlette's)
_READ = frozenset(
    h.encode() for h in (*KEY_HEADERS, "authorization", "content-length", "content-type", "accept")
) | {ROUTE_KEY_HEADER.encode()}


class Gone(Exception):
    """The caller went away before its body was read."""


@dataclass(frozen=True)
class Reply:
    """An answer to send: status, body, its media type and extra headers."""

    status: int
    body: bytes
    media_type: str = codec.JSON
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """``{"error": message}`` as Starlette's JSONResponse writes it."""
    body = json.dumps({"error": message}, ensure_ascii=False, separators=(",", ":")).encode()
    return Reply(status, body, codec.JSON, headers or {})


def admit(front: Front, headers: dict[str, str]) -> Reply | None:
    """None when the request's key is known and its caller under the rate limit, else the
    refusal (401 or 429); counted in the metrics."""
    caller = front.keys.name_of(given_key(headers))
    if caller is None:
        front.metrics.refused(401)
        return error(
            401,
            "no valid key: send it in x-ephemerid-key (or Authorization: Bearer KEY)",
            {"www-authenticate": "Bearer"},
        )
    wait = front.rates.take(caller)
    if wait > 0:
        front.metrics.refused(429)
        return error(
            429,
            f"key '{caller}' is over its rate limit: retry after {wait:.2f} s",
            {"retry-after": retry_after(wait)},
        )
    return None


def read_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The headers the predict path reads, by lower-case name, the first of each."""
    found: dict[str, str] = {}
    for name, value in raw:
        if name in _READ:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


def route_of(path: str) -> tuple[str, int | None] | None:
    """The model (and version) of a predict path; None for any other path."""
    if not path.endswith(":predict"):
        return None
    if match := _PREDICT.fullmatch(path):
        return match.group(1), None
    if match := _VERSIONED.fullmatch(path):
        return match.group(1), int(match.group(2))
    return None


def lean(front: Front, app: ASGIApp) -> ASGIApp:
    """``app`` with its predict routes answered on the lean path."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        found = route_of(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await app(scope, receive, send)
            return
        if scope["method"] != "POST":
            reply = error(405, "this route takes POST", {"allow": "POST"})
        else:
            reply = await answer(front, found[0], found[1], scope, receive)
        await _send(send, reply)

    return asgi


async def answer(
    front: Front, name: str, version: int | None, scope: Scope, receive: Receive
) -> Reply:
    """A predict request's answer; no exception escapes (a 500 names only its type)."""
    front.active += 1
    front.touch()
    try:
        headers = read_headers(scope["headers"])
        refused = admit(front, headers)
        if refused is not None:
            return refused
        return await _counted(front, name, version, headers, receive)
    except Gone:
        return Reply(499, b"")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return error(500, f"the service failed on this request ({type(exc).__name__})")
    finally:
        front.active -= 1
        front.touch()


async def _counted(
    front: Front, name: str, version: int | None, headers: dict[str, str], receive: Receive
) -> Reply:
    """``_predict`` counted in ``front.arriving`` until its body is read and checked."""
    front.arriving += 1
    counted = [True]

    def arrived() -> None:  # once its body is read and checked, or it is refused
        if counted:
            front.arriving -= 1
            counted.clear()

    try:
        return await _predict(front, name, version, headers, receive, arrived)
    finally:
        arrived()


async def read_body(receive: Receive, declared: str, limit: int) -> bytes | None:
    """The body from ``receive``, or None once it is over ``limit`` bytes (read no further)."""
    if declared.isdigit() and int(declared) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Gone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        if chunk:
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _predict(
    front: Front,
    name: str,
    version: int | None,
    headers: dict[str, str],
    receive: Receive,
    arrived: Callable[[], None],
) -> Reply:
    f = front
    started = time.perf_counter()
    limit = f.limits.max_body_bytes
    body = await read_body(receive, headers.get("content-length", ""), limit)
    if body is None:
        f.metrics.refused(413)
        return error(413, f"the body is over {limit} bytes: split the batch")
    router, metrics = f.router, f.metrics
    try:
        served = router.hold(name, headers.get(ROUTE_KEY_HEADER), version)
    except NotFound as exc:
        metrics.refused(404)
        return error(404, str(exc))
    number = served.version.version
    extra = {VERSION_HEADER: str(number)}
    try:
        fields, content_type = served.process.fields, headers.get("content-type", "")
        try:
            table = codec.read_body(body, content_type, fields, f.limits.max_rows)
        except codec.BodyError as exc:
            metrics.answered(name, number, exc.status, time.perf_counter() - started, 0)
            return error(exc.status, str(exc), extra)
        arrived()
        try:
            rows = await served.batcher.predict(table)
        except PredictFailed as exc:
            metrics.answered(name, number, 502, time.perf_counter() - started, 0)
            return error(502, f"the model could not predict: {exc}", extra)
    finally:
        router.release(served)
    metrics.answered(name, number, 200, time.perf_counter() - started, rows.num_rows)
    if codec.wants_arrow(headers.get("accept", "")):
        return Reply(200, codec.to_arrow(rows), codec.ARROW, extra)
    return Reply(200, codec.to_json(name, number, rows), codec.JSON, extra)


async def _send(send: Send, reply: Reply) -> None:
    headers = [
        (b"content-length", str(len(reply.body)).encode()),
        (b"content-type", reply.media_type.encode()),
    ]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})

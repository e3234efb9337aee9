"""HTTP for the dev host: ``/api/<route>`` for HTTP triggers and the blob extension's webhook.

HTTP functions answer at ``/api/<route>`` with their route templates (``jobs/{id}``), methods
and auth level: ``function`` (and ``admin``) need one of the dev keys (``keys``: a named
function key or the master key) in the ``x-functions-key`` header or the ``code`` query
parameter, and only ``anonymous`` bindings go without. ``X-MS-CLIENT-PRINCIPAL*`` headers are
dropped: only App Service authentication sets them, and there is none here. Request bodies are
limited to ``MAX_BODY`` bytes (413). Event Grid deliveries for blob triggers arrive as
``POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>&code=<key>``, as in Azure,
with both the Event Grid validation handshake and the CloudEvents ``OPTIONS`` handshake.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func

from ephemerid.devhost import keys
from ephemerid.devhost.eventgrid import BLOB_CREATED, VALIDATION, StorageEvent, parse_delivery
from ephemerid.devhost.functions import HostedFunction
from ephemerid.errors import BadInput
from ephemerid.functions.callers import KeyRing
from ephemerid.spec import check_nesting

log = logging.getLogger("ephemerid.devhost")
MAX_BODY = 1024 * 1024
DISCARD_LIMIT = 16 * MAX_BODY
ROUTE_PREFIX = "/api/"
WEBHOOK_PATH = "/runtime/webhooks/blobs"
FUNCTION_PREFIX = "Host.Functions."
_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)\??(?::([A-Za-z]+)[^}]*)?\}")
_WHOLE = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() takes '²', which int() refuses
_CONSTRAINTS = {"int": r"-?\d+", "long": r"-?\d+", "alpha": r"[A-Za-z]+"}

Invoke = Callable[[HostedFunction, object, str], object]
Deliver = Callable[[HostedFunction, StorageEvent], dict[str, str]]


class HttpError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, data: Any, **headers: str) -> Reply:
    body = json.dumps(data).encode()
    return Reply(
        status, body, [("Content-Type", "application/json; charset=utf-8"), *headers.items()]
    )


@dataclass(frozen=True)
class Route:
    function: HostedFunction
    template: str
    regex: re.Pattern[str]
    methods: frozenset[str]
    anonymous: bool

    @classmethod
    def of(cls, function: HostedFunction) -> Route:
        binding = function.binding
        template = str(binding.get("route") or function.name).strip("/")
        methods = frozenset(str(m).upper() for m in binding.get("methods") or ["GET", "POST"])
        auth = str(binding.get("authLevel") or "function").lower()
        return cls(function, template, _compile(template), methods, auth == "anonymous")


def _compile(template: str) -> re.Pattern[str]:
    regex, at = "", 0
    for found in _PARAM.finditer(template):
        regex += re.escape(template[at : found.start()])
        catch_all, name, constraint = found.groups()
        part = ".*" if catch_all else _CONSTRAINTS.get((constraint or "").lower(), "[^/]+")
        regex += f"(?P<{name}>{part})"
        at = found.end()
    return re.compile(regex + re.escape(template[at:]), re.IGNORECASE)


class DevServer:
    """A ThreadingHTTPServer on 127.0.0.1 that hands requests to the registered functions."""

    def __init__(
        self,
        port: int,
        routes: list[Route],
        webhooks: Mapping[str, HostedFunction],
        key: str,
        invoke: Invoke,
        deliver: Deliver,
        ring: KeyRing | None = None,
    ) -> None:
        self.routes = sorted(routes, key=lambda r: r.template.count("{"))  # literals win
        self.webhooks = dict(webhooks)
        self.key = key
        self.ring = ring or KeyRing({"default": key})
        self.invoke = invoke
        self.deliver = deliver
        handler = type("DevHostHandler", (_Handler,), {"dev": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def dispatch(
        self, method: str, target: str, headers: dict[str, str], read_body: Callable[[], bytes]
    ) -> Reply:
        """Answer one request; ``headers`` have lower-case names."""
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            if url.path == WEBHOOK_PATH:
                return self._webhook(method, query, headers, read_body)
            if url.path.startswith(ROUTE_PREFIX):
                return self._function(method, target, url.path, query, headers, read_body)
            raise HttpError(404, f"nothing at {url.path}: HTTP functions are under {ROUTE_PREFIX}")
        except HttpError as exc:
            return json_reply(exc.status, {"error": str(exc)})

    def _authorized(
        self, query: Mapping[str, str], headers: Mapping[str, str], *, any_key: bool = False
    ) -> None:
        """The default key (the webhook's), or with ``any_key`` any key in the ring."""
        given = headers.get(keys.KEY_HEADER) or query.get(keys.KEY_PARAM)
        known = any_key and bool(given) and self.ring.takes(str(given))
        if not (known or keys.matches(given, self.key)):
            why = "a wrong key" if given else "no key"
            raise HttpError(
                401,
                f"{why}: send the dev host's function key in the {keys.KEY_HEADER} header "
                f"or the {keys.KEY_PARAM} query parameter",
            )

    def _function(
        self,
        method: str,
        target: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        read_body: Callable[[], bytes],
    ) -> Reply:
        rest = path[len(ROUTE_PREFIX) :].strip("/")
        found = [(r, m) for r in self.routes if (m := r.regex.fullmatch(rest))]
        if not found:
            raise HttpError(404, f"no function at {path}")
        allowed = [(r, m) for r, m in found if method in r.methods]
        if not allowed:
            methods = ", ".join(sorted({x for r, _ in found for x in r.methods}))
            return json_reply(405, {"error": f"{path} takes {methods}"}, Allow=methods)
        route, match = allowed[0]
        if not route.anonymous:
            self._authorized(query, headers, any_key=True)
        request = func.HttpRequest(
            method,
            f"{self.url}{target}",
            headers={k: v for k, v in headers.items() if not k.startswith("x-ms-client-principal")},
            params=query,
            route_params={k: unquote(v) for k, v in match.groupdict().items()},
            body=read_body(),
        )
        try:
            response = self.invoke(route.function, request, f"{method} {path}")
        except Exception:
            return json_reply(500, {"error": f"function {route.function.name} failed: see the log"})
        if not isinstance(response, func.HttpResponse):
            return Reply(204) if response is None else Reply(200, str(response).encode())
        return _reply_of(response)

    def _webhook(
        self,
        method: str,
        query: dict[str, str],
        headers: dict[str, str],
        read_body: Callable[[], bytes],
    ) -> Reply:
        self._authorized(query, headers)
        name = query.get("functionName", "")
        function = (
            self.webhooks.get(name[len(FUNCTION_PREFIX) :])
            if name.startswith(FUNCTION_PREFIX)
            else None
        )
        if function is None:
            known = ", ".join(FUNCTION_PREFIX + n for n in sorted(self.webhooks)) or "none"
            raise HttpError(404, f"functionName '{name}' takes no Event Grid events; use {known}")
        if method == "OPTIONS":
            return _cloudevents_handshake(headers)
        if method != "POST":
            return json_reply(405, {"error": "Event Grid deliveries are POSTed"}, Allow="POST")
        try:
            body = read_body()
            check_nesting(body, "the Event Grid delivery")
            events = parse_delivery(body)
        except BadInput as exc:
            raise HttpError(400, str(exc)) from exc
        codes = [e.validation_code for e in events if e.type == VALIDATION]
        if codes:
            return json_reply(200, {"validationResponse": codes[0]})
        return self._deliver_all(function, events)

    def _deliver_all(self, function: HostedFunction, events: list[StorageEvent]) -> Reply:
        results, failed = [], False
        for event in events:
            if event.type != BLOB_CREATED:
                results.append({"id": event.id, "skipped": f"{event.type} triggers nothing"})
                continue
            try:
                results.append({"id": event.id, **self.deliver(function, event)})
            except Exception as exc:  # Event Grid retries the delivery; each event is idempotent
                failed = True
                results.append({"id": event.id, "error": f"{type(exc).__name__}: {exc}"})
        return json_reply(500 if failed else 202, {"events": results})


def _cloudevents_handshake(headers: Mapping[str, str]) -> Reply:
    origin = headers.get("webhook-request-origin")
    if not origin:
        raise HttpError(400, "the CloudEvents handshake needs a WebHook-Request-Origin header")
    rate = headers.get("webhook-request-rate") or "*"
    return Reply(
        200,
        headers=[
            ("WebHook-Allowed-Origin", origin),
            ("WebHook-Allowed-Rate", rate),
            ("Allow", "POST"),
        ],
    )


def _reply_of(response: func.HttpResponse) -> Reply:
    headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", f"{response.mimetype}; charset={response.charset}"))
    return Reply(response.status_code, response.get_body(), headers)


class _Handler(BaseHTTPRequestHandler):
    dev: DevServer
    _length = 0
    protocol_version = "HTTP/1.1"
    server_version = "ephemerid-devhost"

    def _handle(self) -> None:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            low = name.lower()
            headers[low] = f"{headers[low]}, {value}" if low in headers else value
        self._body_read = False
        raw = self.headers.get("Content-Length", "0").strip()
        if not _WHOLE.fullmatch(raw):  # no telling where the body ends: answer, then hang up
            self.close_connection = self._body_read = True
            why = f"Content-Length '{raw:.40}' is not a whole number of bytes (digits 0-9)"
            reply = json_reply(400, {"error": why})
        else:
            self._length = int(raw)
            reply = self.dev.dispatch(self.command, self.path, headers, self._read_body)
        if not self._body_read:
            self._discard_body()
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _read_body(self) -> bytes:
        if self._chunked():
            raise HttpError(411, "send a Content-Length: chunked bodies are not accepted")
        if self._length > MAX_BODY:
            raise HttpError(413, f"the body is {self._length} bytes; the dev host takes {MAX_BODY}")
        self._body_read = True
        return self.rfile.read(self._length)

    def _discard_body(self) -> None:
        """Read a body nobody wanted (refused requests), so the client sees the answer, not a
        reset; a huge one is not read: the connection is closed instead."""
        if self._length > DISCARD_LIMIT or self._chunked():
            self.close_connection = True
            return
        left = self._length
        while left > 0:
            chunk = self.rfile.read(min(left, 64 * 1024))
            if not chunk:
                break
            left -= len(chunk)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

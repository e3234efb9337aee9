"""A local ARM simulator: the part of Azure Resource Manager that ephemerid's backends call.

``ArmSimulator`` is a ThreadingHTTPServer on 127.0.0.1 (a free port) that answers what
``azure-mgmt-compute``'s ``ComputeManagementClient.virtual_machines`` sends: PUT, GET and DELETE
of ``/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}``
and the list of a resource group (with ``nextLink`` paging). PUT and DELETE are long-running
operations answered the ARM way: 201/202 with ``Azure-AsyncOperation`` and/or ``Location``
headers, whose URLs answer ``InProgress`` until the operation ends ``Succeeded``, ``Failed`` or
``Canceled``. Tags are kept; ``inventory()`` lists every VM that still exists, which is what
Azure would still bill. ``/metadata/scheduledevents`` is a fake of the instance metadata
service's Scheduled Events document, where ``preempt()`` posts spot evictions; each VM's own
metadata service (its resource id, a token of its identity) is at ``imds_url(name)``. Each
request records its caller: ``service`` (the simulator's token) or ``identity of <vm>``.

Tests and benchmarks script it: provisioning and deletion latency, 429 with ``Retry-After``
(long ones too), 500s, 409 Conflict and connection resets (``faults``, ``fail_next``), capacity
and quota refusals per SKU, region and spot, and failed create operations (``refuse``), stale
404s on GET just after a create (``stale_reads``), a VM whose provisioning failed while it runs
(``fail_provisioning``), requests held until released (``hold``, to kill a client mid-call) and
evictions (``preempt``). A PUT body with a key the SDK's ``VirtualMachine`` model does not know
is refused with 400. Point the real client at it with ``compute_client(sim.endpoint)``
(built by ephemerid.azure.clients: a static token, and plain http allowed for loopback hosts
only). Fake the transport, never the client. What it does not simulate is listed in
docs/azure-vm.md. The VM answers are in ``ephemerid.testing.arm_vms``.

Azure ML workspace jobs (``Microsoft.MachineLearningServices``) are answered by ``sim.ml``, an
``AmlJobs`` (ephemerid.testing.aml); ``ml_client(sim.endpoint, …)`` is the real ``MLClient``
pointed at it. Container Apps (``Microsoft.App``: the prediction service's revisions, traffic)
are answered by ``sim.apps``, a ``ContainerApps`` (ephemerid.testing.arm_containerapps).
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from ephemerid.azure import clients
from ephemerid.azure.clients import SIMULATOR_TOKEN as TOKEN
from ephemerid.azure.clients import StaticToken, is_loopback
from ephemerid.testing.aml import PROVIDER, AmlJobs
from ephemerid.testing.arm_containerapps import APPS_PROVIDER, ContainerApps
from ephemerid.testing.arm_vms import (
    IMDS_PREFIX,
    SUBSCRIPTION,
    Refusal,
    Reply,
    SimVm,
    VmRoutes,
    _Op,
)
from ephemerid.testing.arm_vms import arm_error as _error

__all__ = ["TOKEN", "ArmSimulator", "Refusal", "SimVm", "StaticToken", "is_loopback"]
EVENTS_PATH = "/metadata/scheduledevents"
SERVICE = "service"
FAULTS: tuple[str, ...] = ("throttle", "error", "reset")
SCRIPTED = (*FAULTS, "lost", "conflict")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    caller: str = SERVICE


class ArmSimulator(VmRoutes):
    def __init__(
        self,
        *,
        provision_s: float = 0.05,
        delete_s: float = 0.05,
        retry_after: str = "1",
        lro: str = "both",  # headers on 201/202: "async" (Azure-AsyncOperation), "location", "both"
        page_size: int = 50,
        seed: int = 0,
        aml_queue_s: float = 0.05,
        aml_cancel_s: float = 0.05,
    ) -> None:
        self.provision_s, self.delete_s = provision_s, delete_s
        self.retry_after, self.lro, self.page_size = retry_after, lro, page_size
        self.requests: list[Request] = []
        self.created: list[SimVm] = []  # every VM a PUT created, in order
        self.evicted: list[str] = []
        self._vms: dict[tuple[str, str], SimVm] = {}
        self.vm_tokens: dict[str, tuple[str, str]] = {}
        self._ops: dict[str, _Op] = {}
        self._refusals: list[Refusal] = []
        self._fault_rate, self._fault_kinds = 0.0, FAULTS
        self._scripted: list[tuple[str, str | None, str]] = []
        self._stale: dict[str | None, int] = {}
        self._hold: set[str] = set()
        self._held = 0
        self._release = threading.Event()
        self._incarnation = 1
        self.events_asked: list[float] = []  # when each Scheduled Events call came (time.time())
        self._events_warm_up_s, self._events_on_at = 0.0, 0.0
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self.ml = AmlJobs(
            lambda: self.endpoint,
            SUBSCRIPTION,
            self._lock,
            queue_s=aml_queue_s,
            cancel_s=aml_cancel_s,
        )
        self.apps = ContainerApps(lambda: self.endpoint, self._lock)

    # -- life ------------------------------------------------------------------------------

    def start(self) -> ArmSimulator:
        handler = type("Handler", (_Handler,), {"sim": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release_holds()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> ArmSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() the simulator first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def scheduled_events_url(self) -> str:
        return f"{self.endpoint}{EVENTS_PATH}?api-version=2020-07-01"

    # -- scripting -------------------------------------------------------------------------

    def refuse(self, code: str, **match: Any) -> Refusal:
        """Refuse matching PUTs with ``code`` (see ``Refusal``); returns the rule to change."""
        with self._lock:
            self._refusals.append(Refusal(code, **match))
            return self._refusals[-1]

    def faults(self, rate: float, kinds: tuple[str, ...] = FAULTS) -> None:
        """Answer a ``rate`` fraction of ARM requests with one of ``kinds``, at random."""
        with self._lock:
            self._fault_rate, self._fault_kinds = rate, kinds

    def fail_next(
        self, kind: str, *, method: str | None = None, count: int = 1, retry_after: str = ""
    ) -> None:
        """Answer the next ``count`` requests (of ``method``) with fault ``kind``: one of FAULTS,
        ``lost`` (the request takes effect, then its connection is reset) or ``conflict`` (409
        Conflict: another operation on the resource is in progress). A throttle answers
        ``Retry-After: retry_after`` (default: the simulator's ``retry_after``)."""
        if kind not in SCRIPTED:
            raise ValueError(f"fault '{kind}' is not one of {', '.join(SCRIPTED)}")
        with self._lock:
            self._scripted.extend([(kind, method, retry_after or self.retry_after)] * count)

    def hold(self, *methods: str) -> None:
        """Apply requests with these methods, then keep their answer until ``release_holds``."""
        with self._lock:
            self._hold = set(methods)
            self._release.clear()

    def held(self) -> int:
        return self._held

    def release_holds(self) -> None:
        with self._lock:
            self._hold = set()
            self._release.set()

    # -- reading ---------------------------------------------------------------------------

    def inventory(self) -> list[SimVm]:
        """Every VM that still exists, in any state: what Azure would still bill."""
        with self._lock:
            self._tick()
            return list(self._vms.values())

    def vm(self, name: str) -> SimVm | None:
        return next((v for v in self.inventory() if v.name == name), None)

    def created_for(self, tag: str, value: str) -> list[SimVm]:
        return [v for v in self.created if v.tags.get(tag) == value]

    # -- answering -------------------------------------------------------------------------

    def answer(self, method: str, url: str, headers: Any, raw: bytes) -> Reply | None:
        """The reply to one request; None means: reset the connection instead."""
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if parsed.path.rstrip("/").lower() == EVENTS_PATH:
            time.sleep(self._events_wait())
            return self._events(headers)
        if parsed.path.startswith(IMDS_PREFIX):
            with self._lock:
                return self._imds(parsed.path, query, headers)
        with self._lock:
            caller = self._caller(headers)
            self.requests.append(Request(method, parsed.path, query, caller or "nobody"))
            fault, retry_after = self._pick_fault(method)
            if fault == "throttle":
                message = "simulated throttling: retry after the Retry-After header"
                return 429, _error("TooManyRequests", message), {"Retry-After": retry_after}
            if fault == "error":
                return 500, _error("InternalServerError", "simulated server error"), {}
            if fault == "conflict":
                message = "The request failed due to conflict with a concurrent request."
                return 409, _error("Conflict", message), {}
            late_reset = fault == "lost" or (fault == "reset" and self._rng.random() < 0.5)
            if fault == "reset" and not late_reset:
                return None
            self._tick()
            reply = self._route(method, parsed.path, query, headers, raw)
            hold = method in self._hold
        if late_reset:  # the request took effect, its answer is lost
            return None
        if hold:
            with self._lock:
                self._held += 1
            self._release.wait(120)
        return reply

    def _pick_fault(self, method: str) -> tuple[str | None, str]:
        for i, (kind, only, retry_after) in enumerate(self._scripted):
            if only in (None, method):
                del self._scripted[i]
                return kind, retry_after
        if self._fault_rate and self._rng.random() < self._fault_rate:
            return self._rng.choice(self._fault_kinds), self.retry_after
        return None, self.retry_after

    def _tick(self) -> None:
        self.ml.tick()
        now = time.monotonic()
        for key, vm in list(self._vms.items()):
            if vm.evict_at is not None and now >= vm.evict_at:
                del self._vms[key]
                self.evicted.append(vm.name)
                self._incarnation += 1
            elif now >= vm.until and vm.state == "Creating":
                vm.state = "Failed" if vm.error else "Succeeded"
            elif now >= vm.until and vm.state == "Deleting":
                del self._vms[key]

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: Any, raw: bytes
    ) -> Reply:
        if path.startswith("/discovery/"):  # Azure ML's per-workspace service URLs: no token
            return self.ml.discovery()
        caller = self._caller(headers)
        if caller is None:
            return 401, _error("AuthenticationFailed", "no valid bearer token"), {}
        if path.startswith("/history/"):  # Azure ML's run history: no api-version
            return self.ml.history(method, path)
        if "api-version" not in query:
            return 400, _error("MissingApiVersionParameter", "api-version is required"), {}
        parts = [p.lower() for p in path.strip("/").split("/")]
        raw_parts = path.strip("/").split("/")
        is_vms = parts[:1] == ["subscriptions"] and parts[2:3] == ["resourcegroups"]
        is_vms = is_vms and parts[4:7] == ["providers", "microsoft.compute", "virtualmachines"]
        if caller != SERVICE:  # a VM's identity holds the jobs' custom role: delete VMs, no more
            group = self.vm_tokens[_token(headers)][0]
            if not (is_vms and len(parts) == 8 and method == "DELETE" and parts[3] == group):
                message = f"{caller} may only delete VMs of group '{group}', not {method} {path}"
                return 403, _error("AuthorizationFailed", message), {}
        if parts[:1] == ["subscriptions"] and PROVIDER in parts:
            return self.ml.route(method, path, query, raw)
        if parts[:1] == ["subscriptions"] and APPS_PROVIDER in parts:
            return self.apps.route(method, path, query, raw)
        if is_vms and len(parts) == 7 and method == "GET":
            return self._list(parts[3], path, query)
        if is_vms and len(parts) == 8:
            key = (parts[3], parts[7])
            if method == "GET":
                return self._get(key, query)
            if method == "PUT":
                return self._put(key, raw_parts[3], raw_parts[7], raw)
            if method == "DELETE":
                return self._delete(key, query)
        is_op = parts[2:5] == ["providers", "microsoft.compute", "locations"]
        if is_op and len(parts) == 8 and parts[6] == "operations" and method == "GET":
            return self._operation(raw_parts[7], query)
        return 400, _error("UnsupportedBySimulator", f"{method} {path} is not simulated"), {}

    def _caller(self, headers: Any) -> str | None:
        """Who sent a request: the service, a VM's identity, or nobody known (None)."""
        token = _token(headers)
        if token == TOKEN:
            return SERVICE
        vm = self.vm_tokens.get(token)
        return f"identity of {vm[1]}" if vm else None

    def _events(self, headers: Any) -> Reply:
        if headers.get("Metadata", "").lower() != "true":
            return 400, {"error": "Bad request. Required metadata header not specified"}, {}
        with self._lock:
            self._tick()
            events = [dict(v.event) for v in self._vms.values() if v.event]
            return 200, {"DocumentIncarnation": self._incarnation, "Events": events}, {}


def _token(headers: Any) -> str:
    return str(headers.get("Authorization") or "").removeprefix("Bearer ")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that drops its connection (or is killed) is part of the game, not an error."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart
    sim: ArmSimulator

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        reply = self.sim.answer(self.command, self.path, self.headers, raw)
        if reply is None:  # a connection reset: RST, no answer
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        status, body, headers = reply
        data = b"" if body is None else json.dumps(body).encode()
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            if data:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client is gone (killed while its request was held)
            self.close_connection = True


# -- the real client, pointed at the simulator -----------------------------------------------


def compute_client(endpoint: str, subscription_id: str = SUBSCRIPTION, **options: Any) -> Any:
    """The real ``ComputeManagementClient`` for the simulator at ``endpoint`` (loopback only)."""
    clients.check_loopback(endpoint)
    return clients.compute_client(subscription_id, endpoint, **options)


def ml_client(
    endpoint: str,
    resource_group: str,
    workspace: str,
    subscription_id: str = SUBSCRIPTION,
    **options: Any,
) -> Any:
    """The real ``azure.ai.ml.MLClient`` for the simulator at ``endpoint`` (loopback only)."""
    clients.check_loopback(endpoint)
    return clients.ml_client(subscription_id, resource_group, workspace, endpoint, **options)

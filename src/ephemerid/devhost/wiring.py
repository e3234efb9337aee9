"""Which local source feeds which trigger: one small function per trigger type, in a registry.

Each wiring function takes what the host lends its sources (``HostContext``) and a registered
function, and returns the ``Wire`` (what ``eph dev`` prints) and the source to poll, if any. A
function the dev host cannot feed (an unknown trigger, or input/output bindings it does not
provide) is listed as ``not-run``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from ephemerid.artifacts import ArtifactStore
from ephemerid.azure.connection import StorageConnection, storage_connection
from ephemerid.devhost.blobs import BlobSource
from ephemerid.devhost.folderqueue import FolderQueue
from ephemerid.devhost.functions import HostedFunction
from ephemerid.devhost.queues import (
    MAX_DEQUEUE,
    FolderStorageQueueSource,
    ServiceBusStandIn,
    StorageQueueSource,
)
from ephemerid.devhost.timers import Clock, TimerSource
from ephemerid.errors import BadInput


class Source(Protocol):
    def describe(self) -> str: ...

    def poll(self) -> int: ...


@dataclass(frozen=True)
class Wire:
    """What the dev host feeds one function from."""

    function: str
    trigger: str
    source: str  # bucket, storage-queue, folder-queue, servicebus-stand-in, clock, http, not-run
    detail: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


Wiring = tuple[Wire, Source | None]
Invoke = Callable[[HostedFunction, object, str], object]


@dataclass(frozen=True)
class HostContext:
    """What the dev host lends the sources it wires: its home, bucket, clock and invoker, and
    the app settings a binding's ``connection`` is read from."""

    home: Path
    artifacts: ArtifactStore
    invoke: Invoke
    clock: Clock
    timers: bool
    env: Mapping[str, str]


def not_run(function: HostedFunction, why: str) -> Wiring:
    return Wire(function.name, function.trigger, "not-run", why), None


def wire_blob(host: HostContext, function: HostedFunction, options: Mapping[str, Any]) -> Wiring:
    source = BlobSource(function, host.artifacts, host.invoke)
    return Wire(function.name, function.trigger, "bucket", source.describe()), source


def wire_queue(host: HostContext, function: HostedFunction, options: Mapping[str, Any]) -> Wiring:
    name = str(function.binding["queueName"])
    max_dequeue = int(options.get("maxDequeueCount", MAX_DEQUEUE))
    connection = _connection(
        host.env, str(function.binding.get("connection") or "AzureWebJobsStorage")
    )
    source: Source
    if connection is None:
        root = host.home / "queues"
        poison = FolderQueue(root / f"{name}-poison")
        source = FolderStorageQueueSource(
            function, FolderQueue(root / name), poison, host.invoke, max_dequeue
        )
        kind = "folder-queue"
    else:
        base64_bodies = str(options.get("messageEncoding", "base64")).lower() != "none"
        source = StorageQueueSource(
            function, connection, host.invoke, max_dequeue=max_dequeue, base64_bodies=base64_bodies
        )
        kind = "storage-queue"
    return Wire(function.name, function.trigger, kind, source.describe()), source


def wire_servicebus(
    host: HostContext, function: HostedFunction, options: Mapping[str, Any]
) -> Wiring:
    if "queueName" not in function.binding:
        return not_run(function, "the Service Bus stand-in has queues, not topics")
    root = host.home / "servicebus" / str(function.binding["queueName"])
    source = ServiceBusStandIn(
        function, FolderQueue(root), FolderQueue(root / "deadletter"), host.invoke
    )
    return Wire(function.name, function.trigger, "servicebus-stand-in", source.describe()), source


def wire_timer(host: HostContext, function: HostedFunction, options: Mapping[str, Any]) -> Wiring:
    if not host.timers:
        return not_run(function, "timers are off")
    source = TimerSource(function, host.clock, host.invoke)
    return Wire(function.name, function.trigger, "clock", source.describe()), source


# trigger type -> wiring; HTTP triggers are served together (see DevHost._serve)
WIRES: dict[str, Callable[[HostContext, HostedFunction, Mapping[str, Any]], Wiring]] = {
    "blobTrigger": wire_blob,
    "queueTrigger": wire_queue,
    "serviceBusTrigger": wire_servicebus,
    "timerTrigger": wire_timer,
}


def _connection(env: Mapping[str, str], name: str) -> StorageConnection | None:
    """The storage connection the binding names, or None when it is not set here."""
    try:
        return storage_connection(env, name)
    except BadInput:
        return None


def host_options(app_dir: Path | None) -> dict[str, Any]:
    """host.json's ``extensions.queues`` settings, as the Functions host reads them."""
    if app_dir is None or not (app_dir / "host.json").is_file():
        return {}
    try:
        data = json.loads((app_dir / "host.json").read_text())
    except ValueError as exc:
        raise BadInput(f"{app_dir / 'host.json'} is not JSON: {exc}") from exc
    return dict(data.get("extensions", {}).get("queues", {}))


def wiring_json(wiring: list[Wire]) -> list[dict[str, str]]:
    return [w.to_json() for w in wiring]

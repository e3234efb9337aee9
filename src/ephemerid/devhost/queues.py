"""Queue triggers: Storage queues (Azurite, or a folder) and a local stand-in for Service Bus.

Storage queue, as the Functions host runs it: a message is deleted when the function returns;
when it raises, the message is seen again after ``retry_s``, and after ``max_dequeue`` tries
(host.json ``maxDequeueCount``, 5) it moves to ``<queue>-poison``. Message bodies are base64
unless host.json sets ``messageEncoding: none``, as in Azure.

The Service Bus stand-in is a folder queue under the dev host's home. It is **not** Service
Bus: no sessions, no lock renewal (a message whose function outlives the 60 s lock is delivered
again), no scheduled messages, no topics. What it keeps is the part ephemerid relies on: a
message that makes the function raise is delivered again with a growing ``delivery_count``, and
after 10 deliveries it is dead-lettered, with the exception as its reason, to ``deadletter/``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.functions.queue import QueueMessage  # func.QueueMessage with dequeue_count & co
from azure.functions.servicebus import ServiceBusMessage

from ephemerid.azure.clients import queue_client
from ephemerid.azure.connection import StorageConnection
from ephemerid.azure.errors import sdk_errors
from ephemerid.devhost.folderqueue import FolderQueue, Received
from ephemerid.devhost.functions import HostedFunction
from ephemerid.errors import Conflict

log = logging.getLogger("ephemerid.devhost")
Invoke = Callable[[HostedFunction, object, str], object]

MAX_DEQUEUE = 5  # host.json extensions.queues.maxDequeueCount, Azure's default
MAX_DELIVERY = 10  # a Service Bus queue's MaxDeliveryCount, Azure's default


def _failure(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass
class FolderStorageQueueSource:
    """A Storage queue trigger fed from ``<home>/queues/<queue>/`` (no storage connection set)."""

    function: HostedFunction
    queue: FolderQueue
    poison: FolderQueue
    invoke: Invoke
    max_dequeue: int = MAX_DEQUEUE

    def describe(self) -> str:
        return f"folder queue {self.queue.root} (poison: {self.poison.root.name})"

    def poll(self) -> int:
        def failed(received: Received, exc: Exception) -> None:
            reason = {"reason": "MaxDequeueCountExceeded", "description": _failure(exc)}
            self.queue.move_to(received, self.poison, reason)

        return _drain(
            self.queue, self.max_dequeue, self.function, self.invoke, _queue_message, failed
        )


@dataclass
class ServiceBusStandIn:
    """A Service Bus queue trigger fed from ``<home>/servicebus/<queue>/``: not Service Bus."""

    function: HostedFunction
    queue: FolderQueue
    dead_letter: FolderQueue
    invoke: Invoke
    max_delivery: int = MAX_DELIVERY

    def describe(self) -> str:
        return f"local Service Bus stand-in {self.queue.root} (not Service Bus)"

    def poll(self) -> int:
        def failed(received: Received, exc: Exception) -> None:
            self.queue.move_to(received, self.dead_letter, _dead_letter_reason(exc))
            log.warning("dead-lettered Service Bus message %s: %s", received.id, exc)

        return _drain(
            self.queue, self.max_delivery, self.function, self.invoke, _bus_message, failed
        )


def _drain(
    queue: FolderQueue,
    max_tries: int,
    function: HostedFunction,
    invoke: Invoke,
    message_of: Callable[[Received], Any],
    failed: Callable[[Received, Exception], None],
) -> int:
    """Deliver each waiting message; complete it, retry it later, or give up after max_tries."""
    handled = 0
    for received in queue.receive():
        try:
            invoke(function, message_of(received), f"message {received.id}")
        except Exception as exc:
            if received.delivery_count >= max_tries:
                failed(received, exc)
            else:
                queue.abandon(received)
            continue
        queue.complete(received)
        handled += 1
    return handled


def _queue_message(received: Received) -> QueueMessage:
    return QueueMessage(
        id=received.id,
        body=received.body,
        dequeue_count=received.delivery_count,
        insertion_time=datetime.fromtimestamp(received.enqueued_at, UTC),
        pop_receipt=received.id,
    )


def _bus_message(received: Received) -> ServiceBusMessage:
    enqueued = datetime.fromtimestamp(received.enqueued_at, UTC)
    return ServiceBusMessage(
        body=received.body,
        message_id=received.id,
        delivery_count=received.delivery_count,
        enqueued_time_utc=enqueued,
        application_properties={},
        user_properties={},
    )


def _dead_letter_reason(exc: Exception) -> dict[str, Any]:
    return {
        "reason": "MaxDeliveryCountExceeded",
        "description": _failure(exc),
        "dead_lettered_at": datetime.now(UTC).isoformat(),
    }


class StorageQueueSource:
    """A Storage queue trigger fed from a real queue service (Azurite) through the SDK."""

    def __init__(
        self,
        function: HostedFunction,
        connection: StorageConnection,
        invoke: Invoke,
        *,
        max_dequeue: int = MAX_DEQUEUE,
        retry_s: int = 1,
        base64_bodies: bool = True,
    ) -> None:
        self.function = function
        self.invoke = invoke
        self.max_dequeue = max_dequeue
        self.retry_s = retry_s
        self.base64_bodies = base64_bodies
        self.name = str(function.binding["queueName"])
        self.client, self.poison = (
            queue_client(connection, name) for name in (self.name, f"{self.name}-poison")
        )
        for client in (self.client, self.poison):
            with contextlib.suppress(Conflict), _calling(f"creating queue {client.queue_name}"):
                client.create_queue()  # the Functions host creates its queues too

    def describe(self) -> str:
        return f"storage queue {self.client.url} (poison: {self.name}-poison)"

    def poll(self) -> int:
        handled = 0
        with _calling(f"receiving from queue {self.name}"):
            received = list(self.client.receive_messages(max_messages=16, visibility_timeout=30))
        for msg in received:
            try:
                message = QueueMessage(
                    id=msg.id,
                    body=self._body(msg.content),
                    dequeue_count=msg.dequeue_count,
                    expiration_time=msg.expires_on,
                    insertion_time=msg.inserted_on,
                    time_next_visible=msg.next_visible_on,
                    pop_receipt=msg.pop_receipt,
                )
                self.invoke(self.function, message, f"message {msg.id}")
            except Exception as exc:
                self._failed(msg, exc)
                continue
            with _calling(f"deleting message {msg.id} from queue {self.name}"):
                self.client.delete_message(msg.id, msg.pop_receipt)
            handled += 1
        return handled

    def _body(self, content: Any) -> bytes:
        raw = content.encode("utf-8") if isinstance(content, str) else bytes(content or b"")
        if not self.base64_bodies:
            return raw
        try:
            return base64.b64decode(raw, validate=True)
        except binascii.Error as exc:
            raise ValueError(
                "message is not base64, which the queue trigger expects (set "
                "extensions.queues.messageEncoding to none in host.json for raw messages)"
            ) from exc

    def _failed(self, msg: Any, exc: Exception) -> None:
        if (msg.dequeue_count or 0) >= self.max_dequeue:
            with _calling(f"moving message {msg.id} to queue {self.name}-poison"):
                self.poison.send_message(msg.content)
                self.client.delete_message(msg.id, msg.pop_receipt)
            log.warning("moved message %s to %s-poison: %s", msg.id, self.name, _failure(exc))
        else:
            with _calling(f"returning message {msg.id} to queue {self.name}"):
                self.client.update_message(msg.id, msg.pop_receipt, visibility_timeout=self.retry_s)


def _calling(what: str) -> contextlib.AbstractContextManager[None]:
    return sdk_errors(what, role="Storage Queue Data Contributor")


def folder_queues(root: Path, name: str, failed: str) -> tuple[FolderQueue, FolderQueue]:
    """The queue ``root/name`` and where its failures go (``failed`` is a path under root)."""
    return FolderQueue(root / name), FolderQueue(root / failed)

"""Queue triggers: Storage queues on Azurite and in a folder, and the Service Bus stand-in."""

from __future__ import annotations

import base64
import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devhost.conftest import MakeHost
from ephemerid.artifacts import upload_dir
from ephemerid.devhost import DevHost
from ephemerid.devhost.folderqueue import FolderQueue


def job_request(host: DevHost, project: Path) -> bytes:
    upload_dir(host.service.artifacts, project / "code", "code/app")
    code = host.service.artifacts.uri("code/app")
    return json.dumps({"kind": "train", "code": code, "entrypoint": "job.py"}).encode()


@pytest.fixture
def queue_name(azurite_connection: str) -> Iterator[str]:
    """A queue of this test's own on the session's Azurite, and its poison queue, removed after."""
    name = f"jobs-{uuid.uuid4().hex[:12]}"
    yield name
    for queue in (name, f"{name}-poison"):
        with QueueClient.from_connection_string(azurite_connection, queue) as client:
            client.delete_queue()


@pytest.fixture
def azurite_host(make_host: MakeHost, azurite_connection: str, queue_name: str) -> DevHost:
    settings = {"EPHEMERID_STORAGE": azurite_connection, "EPHEMERID_JOBS_QUEUE": queue_name}
    return make_host(settings=settings)


def sender(connection: str, queue: str) -> QueueClient:
    """How an app sends to a queue trigger: base64, the Functions default encoding."""
    return QueueClient.from_connection_string(
        connection, queue, message_encode_policy=TextBase64EncodePolicy()
    )


def test_a_storage_queue_message_on_azurite_makes_a_job(
    azurite_host: DevHost, azurite_connection: str, queue_name: str, project: Path
) -> None:
    wire = next(w for w in azurite_host.wiring if w.function == "on_job_queue_message")
    assert (wire.source, queue_name in wire.detail) == ("storage-queue", True)
    with sender(azurite_connection, queue_name) as queue:
        sent = queue.send_message(job_request(azurite_host, project).decode())

        azurite_host.run(until=lambda: bool(azurite_host.service.store.list()), timeout=20)

        [job] = azurite_host.service.store.list()
        assert job.key == f"queue:{sent.id}"
        assert list(queue.peek_messages()) == []


def test_a_malformed_queue_message_is_rejected_once_and_not_retried(
    azurite_host: DevHost, azurite_connection: str, queue_name: str
) -> None:
    with sender(azurite_connection, queue_name) as queue:
        sent = queue.send_message("train please")
        for _ in range(5):
            azurite_host.poll()

        assert [(c.function, c.ok) for c in azurite_host.invocations] == [
            ("on_job_queue_message", True)
        ]
        assert azurite_host.service.store.list() == []
        [rejection] = azurite_host.service.rejections()
        assert (rejection.source, rejection.id) == ("queue", sent.id)
        assert "not JSON" in rejection.reason
        assert list(queue.peek_messages()) == []
    with QueueClient.from_connection_string(azurite_connection, f"{queue_name}-poison") as poison:
        assert list(poison.peek_messages()) == []


def test_a_message_that_is_not_base64_ends_in_the_poison_queue_after_five_tries(
    azurite_host: DevHost, azurite_connection: str, queue_name: str
) -> None:
    raw = QueueClient.from_connection_string(azurite_connection, queue_name)
    with raw, QueueClient.from_connection_string(azurite_connection, f"{queue_name}-poison") as p:
        raw.send_message("{not base64}")

        azurite_host.run(until=lambda: bool(list(p.peek_messages())), timeout=30)

        [poisoned] = p.peek_messages()
        assert poisoned.content == "{not base64}"
        assert list(raw.peek_messages()) == []
    assert azurite_host.invocations == []  # no function saw it


def test_a_folder_queue_message_makes_a_job_without_any_storage_service(
    make_host: MakeHost, project: Path
) -> None:
    host = make_host()
    queue = FolderQueue(host.home / "queues" / "jobs")
    queue.send(job_request(host, project), "order-7")

    host.run(until=lambda: bool(host.service.store.list()), timeout=10)

    [job] = host.service.store.list()
    assert job.key == "queue:order-7"
    assert queue.waiting() == []


FAILING_APP = """
import azure.functions as func

app = func.FunctionApp()


@app.service_bus_queue_trigger(arg_name="msg", queue_name="work", connection="BUS")
def always_fails(msg: func.ServiceBusMessage) -> None:
    raise RuntimeError(f"cannot handle delivery {msg.delivery_count} of {msg.message_id}")
"""


def test_the_service_bus_stand_in_redelivers_then_dead_letters_with_the_reason(
    make_host: MakeHost, tmp_path: Path
) -> None:
    app = tmp_path / "failing" / "function_app.py"
    app.parent.mkdir()
    app.write_text(textwrap.dedent(FAILING_APP))
    host = make_host(app=app)
    [wire] = host.wiring
    assert wire.source == "servicebus-stand-in"
    queue = FolderQueue(host.home / "servicebus" / "work")
    queue.send(base64.b64encode(b"anything"), "m-1")

    dead = FolderQueue(host.home / "servicebus" / "work" / "deadletter")
    host.run(until=lambda: bool(dead.waiting()), timeout=20)

    assert [c.error for c in host.invocations] == [
        f"RuntimeError: cannot handle delivery {n} of m-1" for n in range(1, 11)
    ]
    assert dead.waiting() == ["m-1"]
    reason = dead.reason("m-1")
    assert reason["reason"] == "MaxDeliveryCountExceeded"
    assert reason["description"] == "RuntimeError: cannot handle delivery 10 of m-1"
    assert queue.waiting() == []

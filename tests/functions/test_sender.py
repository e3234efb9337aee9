"""The example sender's messages are what the queue function accepts (Storage Queue on Azurite)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import azure.functions as func
from azure.storage.queue import QueueClient

from drive import finish, write_script
from ephemerid.artifacts import upload_dir
from ephemerid.functions.handlers import Handlers
from ephemerid.rules import Rules
from ephemerid.service import Service

SENDER = Path(__file__).resolve().parents[2] / "examples" / "send_job.py"


def test_a_request_sent_by_the_example_sender_becomes_a_job(
    service: Service, code_dir: Path, tmp_path: Path, azurite_connection: str
) -> None:
    write_script(code_dir, "print('hello from a queue')\n")
    upload_dir(service.artifacts, code_dir, "code/q")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({
        "kind": "train", "code": service.artifacts.uri("code/q"), "entrypoint": "job.py",
        "params": {"note": "$(rm -rf ~); `id`"},
    }))  # fmt: skip
    queue = QueueClient.from_connection_string(azurite_connection, "jobs-sender-test")
    queue.create_queue()
    env = {**os.environ, "STORAGE_CONNECTION": azurite_connection}
    subprocess.run(
        [sys.executable, str(SENDER), str(spec), "--queue", "jobs-sender-test",
         "--storage-connection"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip

    [message] = list(queue.receive_messages())
    body = base64.b64decode(message.content)  # the Functions host decodes base64 as here
    Handlers(service, Rules.parse("", base=tmp_path)).job_queue_message(
        func.QueueMessage(id=message.id, body=body)
    )
    [job] = service.store.list()
    assert job.spec.params == {"note": "$(rm -rf ~); `id`"}
    assert finish(service, job.id).state.value == "SUCCEEDED"

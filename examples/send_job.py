"""Send a job request to ephemerid from an app, over Service Bus or a Storage Queue.

A request is a JSON job spec; its ``code`` must be an artifact URI (upload the code folder to
the bucket first), because a folder on your machine means nothing to the function app:

    {"kind": "train", "code": "az://code/tabular", "entrypoint": "train.py",
     "inputs": {"data": "az://incoming/train/customers.csv"},
     "params": {"epochs": 8}, "register_as": {"name": "tabular", "alias": "production"},
     "compute": {"gpus": 1, "max_runtime": "2h"},
     "idempotency_key": "optional: defaults to the message id"}

A message that is not a valid job is not retried: it is recorded with its reason, and
``eph rejected`` or ``GET /api/rejected`` shows why. Credentials come from the environment:
``az login`` (or a managed identity) with ``--namespace``/``--account``, or a connection string
in ``SERVICEBUS_CONNECTION`` / ``STORAGE_CONNECTION``. Nothing secret goes into the message.

    python send_job.py job.json --namespace myns.servicebus.windows.net --message-id order-42
    python send_job.py job.json --account mystorageaccount
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import uuid
from pathlib import Path


def send_service_bus(body: str, message_id: str, queue: str, namespace: str | None) -> None:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage

    if namespace:
        from azure.identity import DefaultAzureCredential

        client = ServiceBusClient(namespace, DefaultAzureCredential())
    else:
        client = ServiceBusClient.from_connection_string(os.environ["SERVICEBUS_CONNECTION"])
    with client, client.get_queue_sender(queue) as sender:
        sender.send_messages(
            ServiceBusMessage(body, message_id=message_id, content_type="application/json")
        )


def send_storage_queue(body: str, queue: str, account: str | None) -> None:
    from azure.storage.queue import QueueClient

    if account:
        from azure.identity import DefaultAzureCredential

        url = f"https://{account}.queue.core.windows.net"
        client = QueueClient(url, queue, credential=DefaultAzureCredential())
    else:
        client = QueueClient.from_connection_string(os.environ["STORAGE_CONNECTION"], queue)
    # The Functions queue trigger reads base64 messages by default.
    client.send_message(base64.b64encode(body.encode()).decode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="a JSON job spec")
    parser.add_argument("--queue", default="jobs")
    parser.add_argument("--message-id", default=None, help="Service Bus: the idempotency key")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--namespace", help="Service Bus namespace (identity-based)")
    target.add_argument("--account", help="storage account for a Storage Queue")
    target.add_argument(
        "--servicebus-connection",
        action="store_true",
        help="Service Bus with SERVICEBUS_CONNECTION",
    )
    target.add_argument(
        "--storage-connection", action="store_true", help="Storage Queue with STORAGE_CONNECTION"
    )
    args = parser.parse_args()
    body = json.dumps(json.loads(args.spec.read_text()))  # fails early on a file that isn't JSON
    if args.namespace or args.servicebus_connection:
        message_id = args.message_id or str(uuid.uuid4())
        send_service_bus(body, message_id, args.queue, args.namespace)
        print(f"sent message {message_id} to Service Bus queue {args.queue}")
    else:
        send_storage_queue(body, args.queue, args.account)
        print(f"sent a message to Storage Queue {args.queue}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

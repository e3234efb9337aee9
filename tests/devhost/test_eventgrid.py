"""Event Grid deliveries to the blob extension's webhook, in Microsoft's own payload shapes.

The samples are copied unchanged from Microsoft's documentation ("Azure Blob Storage as an
Event Grid source", both schemas; "Webhook event delivery" for the validation event); a test
only points the subject and URL at a blob in the bucket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devhost.conftest import Call, MakeHost
from drive import upload
from ephemerid.devhost import DevHost
from ephemerid.devhost.eventgrid import parse_delivery

EVENT_GRID_BLOB_CREATED = """
[{
  "topic": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
  "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
  "eventType": "Microsoft.Storage.BlobCreated",
  "eventTime": "2017-06-26T18:41:00.9584103Z",
  "id": "831e1650-001e-001b-66ab-eeb76e069631",
  "data": {
    "api": "PutBlockList",
    "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
    "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
    "eTag": "\\"0x8D4BCC2E4835CD0\\"",
    "contentType": "text/plain",
    "contentLength": 524288,
    "blobType": "BlockBlob",
    "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
    "sequencer": "00000000000004420000000000028963",
    "storageDiagnostics": {
      "batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0"
    }
  },
  "dataVersion": "",
  "metadataVersion": "1"
}]
"""  # noqa: E501

CLOUD_EVENT_BLOB_CREATED = """
[{
  "source": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
  "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
  "type": "Microsoft.Storage.BlobCreated",
  "time": "2017-06-26T18:41:00.9584103Z",
  "id": "831e1650-001e-001b-66ab-eeb76e069631",
  "data": {
    "api": "PutBlockList",
    "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
    "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
    "eTag": "\\"0x8D4BCC2E4835CD0\\"",
    "contentType": "text/plain",
    "contentLength": 524288,
    "blobType": "BlockBlob",
    "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
    "sequencer": "00000000000004420000000000028963",
    "storageDiagnostics": {
      "batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0"
    }
  },
  "specversion": "1.0"
}]
"""  # noqa: E501

SUBSCRIPTION_VALIDATION = """
[
  {
    "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
    "topic": "/subscriptions/xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
    "subject": "",
    "data": {
      "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
      "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/estest/validate?id=512d38b6-c7b8-40c8-89fe-f46f9e9622b6&t=2018-04-26T20:30:54.4538837Z&apiVersion=2018-05-01-preview&token=1A1A1A1A"
    },
    "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
    "eventTime": "2018-01-25T22:12:19.4556811Z",
    "metadataVersion": "1",
    "dataVersion": "1"
  }
]
"""

SAMPLES = {"event-grid": EVENT_GRID_BLOB_CREATED, "cloudevents": CLOUD_EVENT_BLOB_CREATED}


def pointed_at(sample: str, host: DevHost, key: str) -> bytes:
    """The sample with its subject and URL naming ``key`` in the bucket; nothing else changed."""
    events: list[dict[str, Any]] = json.loads(sample)
    container, _, path = key.partition("/")
    for event in events:
        event["subject"] = f"/blobServices/default/containers/{container}/blobs/{path}"
        event["data"]["url"] = host.service.artifacts.uri(key)
    return json.dumps(events).encode()


def webhook(function: str = "on_blob_created") -> str:
    return f"/runtime/webhooks/blobs?functionName=Host.Functions.{function}"


@pytest.mark.parametrize("schema", list(SAMPLES))
def test_a_blob_created_delivery_makes_one_job_however_often_it_is_delivered(
    make_host: MakeHost, call: Call, schema: str
) -> None:
    host = make_host()
    upload(host.service.artifacts, "incoming/train/day1.csv", b"a,b\n1,2\n")
    delivery = pointed_at(SAMPLES[schema], host, "incoming/train/day1.csv")

    first = call(host, "POST", f"{webhook()}&code={host.key}", delivery, key=None)
    again = call(host, "POST", f"{webhook()}&code={host.key}", delivery, key=None)

    assert first.status == again.status == 202
    assert first.json()["events"] == [
        {"id": "831e1650-001e-001b-66ab-eeb76e069631", "delivered": "incoming/train/day1.csv"}
    ]
    [job] = host.service.store.list()
    assert job.source == "blob incoming/train/day1.csv (rule train-on-upload)"
    assert [c.function for c in host.invocations] == ["on_blob_created"] * 2

    host.poll(), host.poll()  # the bucket's own poller sees the same blob: still one job
    assert [c.function for c in host.invocations].count("on_blob_created") == 3
    assert [j.id for j in host.service.store.list()] == [job.id]


def test_the_samples_name_their_blob_by_the_subject() -> None:
    for sample in SAMPLES.values():
        [event] = parse_delivery(sample.encode())
        assert (event.key, event.etag) == ("test-container/new-file.txt", "0x8D4BCC2E4835CD0")


def test_a_blob_that_is_not_in_the_bucket_is_skipped(make_host: MakeHost, call: Call) -> None:
    host = make_host()
    delivery = pointed_at(EVENT_GRID_BLOB_CREATED, host, "incoming/train/gone.csv")
    answer = call(host, "POST", webhook(), delivery)
    assert answer.status == 202
    assert answer.json()["events"][0]["skipped"] == "incoming/train/gone.csv is not in the bucket"
    assert host.invocations == []


def test_the_subscription_validation_event_is_answered_with_its_code(
    make_host: MakeHost, call: Call
) -> None:
    host = make_host()
    answer = call(
        host,
        "POST",
        f"{webhook()}&code={host.key}",
        SUBSCRIPTION_VALIDATION.encode(),
        key=None,
        headers={"aeg-event-type": "SubscriptionValidation"},
    )
    assert answer.status == 200
    assert answer.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert host.invocations == []


def test_the_cloudevents_handshake_allows_the_origin(make_host: MakeHost, call: Call) -> None:
    host = make_host()
    answer = call(
        host,
        "OPTIONS",
        f"{webhook('on_run_result')}&code={host.key}",
        key=None,
        headers={"WebHook-Request-Origin": "eventgrid.azure.net"},
    )
    assert answer.status == 200
    assert answer.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert answer.headers["WebHook-Allowed-Rate"] == "*"


@pytest.mark.parametrize("code", [None, "not-the-key"])
def test_the_webhook_needs_the_key(make_host: MakeHost, call: Call, code: str | None) -> None:
    host = make_host()
    path = webhook() if code is None else f"{webhook()}&code={code}"
    answer = call(host, "POST", path, SUBSCRIPTION_VALIDATION.encode(), key=None)
    assert answer.status == 401
    assert "function key" in answer.json()["error"]


def test_a_function_that_takes_no_event_grid_events_is_not_found(
    make_host: MakeHost, call: Call
) -> None:
    host = make_host()
    answer = call(host, "POST", webhook("tick"), SUBSCRIPTION_VALIDATION.encode())
    assert answer.status == 404
    assert "Host.Functions.on_blob_created" in answer.json()["error"]


def test_a_malformed_delivery_is_refused_with_a_reason(make_host: MakeHost, call: Call) -> None:
    host = make_host()
    answer = call(host, "POST", webhook(), b'[{"eventType": "Microsoft.Storage.BlobCreated"}]')
    assert answer.status == 400
    assert "event 0 is not a valid Event Grid event" in answer.json()["error"]


def test_a_blob_name_that_escapes_its_prefix_reaches_the_function_which_refuses_it(
    make_host: MakeHost, call: Call
) -> None:
    host = make_host()
    delivery = pointed_at(EVENT_GRID_BLOB_CREATED, host, "incoming/train/../../etc/passwd.csv")
    answer = call(host, "POST", webhook(), delivery)
    assert answer.status == 202
    assert host.service.store.list() == []
    [rejection] = host.service.rejections()
    assert (rejection.source, "refused" in rejection.reason) == ("blob", True)

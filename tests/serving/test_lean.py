"""The predict routes' plain-ASGI path over a real server: the same refusals as every route,
bodies in pieces, callers that leave, and every other route still answered by Starlette."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from serving.serving import KEY, NAME, Client, Registry, rows, wait_for

LIMIT = 2_000


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    registry = Registry(tmp_path_factory.mktemp("lean"))
    registry.publish(3.0, alias="production")
    with registry.serve(max_body_bytes=LIMIT, max_rows=20) as client:
        yield client


def pieces(body: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def chunked(client: Client, body: bytes, key: str = KEY):  # type: ignore[no-untyped-def]
    return client.http.post(
        f"/v1/models/{NAME}:predict",
        content=pieces(body),  # no Content-Length: chunked, read in many receive() messages
        headers={"x-ephemerid-key": key, "content-type": "application/json"},
    )


def test_a_body_sent_in_pieces_is_read_whole(client: Client) -> None:
    answer = chunked(client, json.dumps({"rows": rows(1, 2, 3)}).encode())

    assert answer.status_code == 200
    assert answer.headers["x-ephemerid-model-version"] == "1"
    assert [r["y"] for r in answer.json()["rows"]] == [3.0, 6.0, 9.0]


def test_a_body_in_pieces_over_the_limit_is_413_and_one_without_a_key_is_401(
    client: Client,
) -> None:
    big = b'{"rows": [' + b" " * (LIMIT + 10) + b"]}"

    over = chunked(client, big)
    keyless = chunked(client, json.dumps({"rows": rows(1)}).encode(), key="wrong")

    assert over.status_code == 413 and f"over {LIMIT} bytes" in over.json()["error"]
    assert keyless.status_code == 401 and keyless.headers["www-authenticate"] == "Bearer"
    assert "x-ephemerid-key" in keyless.json()["error"]


def test_a_predict_route_takes_only_post(client: Client) -> None:
    answer = client.get(f"/v1/models/{NAME}:predict")

    assert answer.status_code == 405 and answer.headers["allow"] == "POST"
    assert "POST" in answer.json()["error"]


def test_paths_near_a_predict_route_are_not_taken_for_one(client: Client) -> None:
    assert client.http.post(f"/v1/models/{NAME}/x:predict", json={}).status_code == 404
    assert client.http.post(f"/v1/models/{NAME}:predicts", json={}).status_code in (404, 405)
    assert client.http.get("/healthz").status_code == 200
    assert client.get(f"/v1/models/{NAME}").json()["model"] == NAME


def test_a_caller_that_leaves_mid_body_is_not_counted_as_arriving(client: Client) -> None:
    front = client.service.front
    url = urlsplit(client.url)
    head = (
        f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nhost: x\r\nx-ephemerid-key: {KEY}\r\n"
        "content-type: application/json\r\ncontent-length: 500\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(head.encode() + b'{"rows": [')
        wait_for(lambda: front.arriving == 1, what="the request to be read")
    wait_for(lambda: front.arriving == 0 and front.active == 0, what="the caller to be let go")

    assert client.predict(rows(4)).json()["rows"] == [{"id": 4, "y": 12.0}]

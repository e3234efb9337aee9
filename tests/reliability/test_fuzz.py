"""Fuzzed input at every door: no 500, no unhandled exception, a reason for every refusal, and
nothing stored or rented for what was refused.

Doors: the request parser, the HTTP API (real ``azure.functions.HttpRequest`` objects), blob names
through the intake, spec files, and the dev host's HTTP server over a real socket. Each property
has a fixed example budget, so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import azure.functions as func
import pytest
from azure.functions.blob import InputStream
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devhost.conftest import MakeHost, clock, make_host, project  # noqa: F401
from ephemerid.devhost import DevHost
from ephemerid.errors import SpecError
from ephemerid.functions.handlers import Handlers
from ephemerid.intake import parse_request
from ephemerid.record import JobRecord
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.spec import JobKind, JobSpec, load_spec

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# a blob rule whose code folder is missing: whatever name matches, the job is refused, never run
RULES = """
rules:
  - name: train-on-upload
    blob: incoming/train/{name}.csv
    job: {kind: train, name: "train-{name}", code: ./absent, entrypoint: job.py,
          inputs: {data: "{uri}"}}
"""
FIELDS = ["kind", "name", "code", "entrypoint", "args", "inputs", "params", "model"]
FIELDS += ["register_as", "compute", "idempotency_key", "unknown"]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
spec_like = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8)
spec_like |= st.fixed_dictionaries(
    {"kind": st.sampled_from(["train", "predict", "x"]), "code": st.text(max_size=30)},
    optional={"entrypoint": st.text(max_size=20), "compute": json_values, "params": json_values},
)
# digits str.isdigit() takes and int() does not, and numbers written some other way
tricky_numbers = st.sampled_from(["\u00b2", "\u00b9", "1\u00b3", "-1", "+5", "1e3", "0x10", ""])
deep = st.integers(30, 4000).map(lambda n: ("[" * n + "]" * n).encode())
bodies = (
    st.binary(max_size=200)
    | spec_like.map(lambda d: json.dumps(d).encode())
    | json_values.map(lambda v: json.dumps(v).encode())
    | deep
    | deep.map(lambda d: b'{"kind": "train", "params": {"a": ' + d + b"}}")
)


@pytest.fixture
def handlers(service: Service, tmp_path: Path) -> Handlers:
    return Handlers(service, Rules.parse(RULES, base=tmp_path))


def nothing_rented(service: Service) -> None:
    assert service.store.list() == []
    assert service.held_compute() == 0


def refused_with_a_reason(response: func.HttpResponse) -> None:
    assert response.status_code in (200, 400, 404, 409), response.get_body()[:300]
    if response.status_code >= 400:
        assert json.loads(response.get_body())["error"].strip()


@FUZZ
@given(body=bodies)
@example(body=b"[" * 5000)
@example(body=b'{"kind": "train", "params": {"a": ' + b"[" * 500 + b"]" * 500 + b"}}")
def test_the_request_parser_returns_a_spec_or_a_spec_error(body: bytes) -> None:
    try:
        parse_request(body, what="request body")
    except SpecError as exc:
        assert str(exc).strip()


@FUZZ
@given(body=bodies, key=st.none() | st.text(max_size=40))
@example(body=b"{" * 3000, key=None)
@example(body=b'{"kind": "train", "code": "az://x", "entrypoint": "\\udc00.py"}', key=None)
def test_http_submit_answers_every_body_with_a_reason_and_rents_nothing(
    handlers: Handlers, service: Service, body: bytes, key: str | None
) -> None:
    headers = {} if key is None else {"Idempotency-Key": key}
    request = func.HttpRequest("POST", "http://localhost/api/jobs", body=body, headers=headers)
    response = handlers.http_submit(request)
    assert response.status_code == 400
    refused_with_a_reason(response)
    nothing_rented(service)


KNOWN = "train-000000000001"


@FUZZ
@given(
    job=st.just(KNOWN) | st.text(max_size=40),
    offset=tricky_numbers | st.text(max_size=12),
    state=st.text(max_size=12),
)
@example(job=KNOWN, offset="\u00b2", state="")
def test_the_read_api_answers_any_id_offset_or_state_with_a_reason(
    handlers: Handlers, service: Service, job: str, offset: str, state: str
) -> None:
    spec = JobSpec(kind=JobKind.TRAIN, code="az://code/app", entrypoint="job.py")
    known = JobRecord(id=KNOWN, key="k", spec=spec, source="test", backend="local")
    service.store.create_if_absent(known)

    def req(method: str, path: str, **extra: Any) -> func.HttpRequest:
        return func.HttpRequest(method, f"http://localhost/api/{path}", body=b"", **extra)

    route = {"id": job}
    logs = req("GET", "jobs/x/logs", route_params=route, params={"offset": offset})
    refused_with_a_reason(handlers.http_logs(logs))
    refused_with_a_reason(handlers.http_get(req("GET", "jobs/x", route_params=route)))
    refused_with_a_reason(handlers.http_cancel(req("POST", "jobs/x/cancel", route_params=route)))
    refused_with_a_reason(handlers.http_list(req("GET", "jobs", params={"state": state})))
    assert [j.id for j in service.list()] == [KNOWN]
    assert service.held_compute() == 0


blob_names = st.text(max_size=60) | st.text(max_size=30).map(lambda n: f"incoming/train/{n}.csv")


@FUZZ
@given(name=blob_names, etag=st.none() | st.text(min_size=1, max_size=10))
@example(name="", etag="0x1")
@example(name="incoming/train/my batch (2).csv", etag="0x1")
def test_any_blob_name_is_matched_or_refused_with_a_reason_and_rents_nothing(
    handlers: Handlers, service: Service, name: str, etag: str | None
) -> None:
    props = {"ETag": etag} if etag else {}
    handlers.blob_created(InputStream(data=b"", name=name, blob_properties=props))
    assert all(r.reason.strip() for r in service.rejections(limit=10_000))
    nothing_rented(service)  # matched or not, the job is refused: its code folder is absent


documents = (
    st.text(max_size=300)
    | spec_like.map(json.dumps)
    | deep.map(lambda d: "params: " + d.decode())
    | st.integers(30, 200).map(lambda n: "".join(f"{'  ' * i}k:\n" for i in range(n)))
)


@FUZZ
@given(document=documents.map(lambda text: text.encode("utf-8")) | st.binary(max_size=100))
@example(document=b'{"kind": "train", "code": "./c", "entrypoint": "\\ud800.py"}')
@example(document=b"kind: train\nname: \xff\xfe\n")
def test_a_spec_file_loads_or_is_a_spec_error(tmp_path: Path, document: bytes) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(document)
    try:
        load_spec(path)
    except SpecError as exc:
        assert str(exc).strip()


# --- the dev host's HTTP server, over a real socket --------------------------------------------

header_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"),
    max_size=12,
)


def exchange(host: DevHost, request: bytes) -> tuple[int, bytes]:
    """Send ``request``, close our side, and read the whole answer: (status, body)."""
    port = int(host.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), answer[:200]
    return int(head.split()[1]), body


@pytest.fixture
def host(make_host: MakeHost) -> DevHost:  # noqa: F811
    return make_host()


@settings(FUZZ, max_examples=40)
@given(
    length=tricky_numbers | header_values,
    offset=tricky_numbers | header_values,
    keyed=st.booleans(),
    body=st.binary(max_size=64),
)
@example(length="\u00b2", offset="0", keyed=True, body=b"")
@example(length="\u00b2", offset="\u00b2", keyed=False, body=b"")
def test_the_dev_server_answers_any_content_length_or_offset_with_a_reason(
    host: DevHost, length: str, offset: str, keyed: bool, body: bytes
) -> None:
    key = f"x-functions-key: {host.key}\r\n".encode() if keyed else b""
    for target in ("/api/jobs", f"/api/jobs/x/logs?offset={quote(offset)}"):
        method = b"POST" if target == "/api/jobs" else b"GET"
        head = method + b" " + target.encode() + b" HTTP/1.1\r\nHost: fuzz\r\n" + key
        head += b"Connection: close\r\n"
        head += b"Content-Length: " + length.encode("latin-1") + b"\r\n\r\n"
        status, answer = exchange(host, head + body)
        assert 400 <= status < 500, (status, answer[:300])
        assert json.loads(answer)["error"].strip()
    nothing_rented(host.service)

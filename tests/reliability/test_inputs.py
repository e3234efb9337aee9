"""Bad input is refused with a reason that names what was wrong, never a crash or a stored job.

Each test is one reviewer's reproduction from issue 14: deep JSON, non-ASCII digits, symlinks
out of a folder, idempotency keys claimed across sources, unchecked SKUs and rule templates,
unrecorded HTTP refusals, file names that break a job name, and redeliveries called new.
"""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.blob import InputStream

from devhost.conftest import Call, MakeHost, call, clock, make_host, project  # noqa: F401
from drive import finish, log_of, spec_for, upload, write_script
from ephemerid.artifacts import upload_dir
from ephemerid.errors import RuleError, SpecError
from ephemerid.functions.handlers import Handlers
from ephemerid.intake import fire_schedules, parse_request
from ephemerid.record import JobState
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.spec import load_spec, validate_spec

NIGHTLY = """
rules:
  - name: nightly
    schedule: "0 0 2 * * *"
    job: {kind: train, code: ./code, entrypoint: job.py}
  - name: train-on-upload
    blob: incoming/train/{name}.csv
    job: {kind: train, name: "train-{name}", code: ./code, entrypoint: job.py}
"""


@pytest.fixture
def handlers(service: Service, code_dir: Path) -> Handlers:
    write_script(code_dir, "print('trained')\n")
    return Handlers(service, Rules.parse(NIGHTLY, base=code_dir.parent))


@pytest.fixture
def code_uri(service: Service, code_dir: Path) -> str:
    write_script(code_dir, "print('trained')\n")
    upload_dir(service.artifacts, code_dir, "code/app")
    return service.uri("code/app")


def post(handlers: Handlers, body: bytes, **headers: str) -> func.HttpResponse:
    request = func.HttpRequest("POST", "http://localhost/api/jobs", body=body, headers=headers)
    return handlers.http_submit(request)


def error_of(response: func.HttpResponse) -> str:
    error: str = json.loads(response.get_body())["error"]
    return error


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def request_with_params(code: str, params: str) -> bytes:
    head = f'{{"kind": "train", "code": "{code}", "entrypoint": "job.py"'
    return f'{head}, "params": {params}}}'.encode()


def nothing_rented(service: Service) -> None:
    assert service.store.list() == []
    assert service.held_compute() == 0


# --- (9) deep JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [500, 5000])
def test_a_deeply_nested_request_is_a_400_naming_the_depth_limit(
    handlers: Handlers, service: Service, code_uri: str, depth: int
) -> None:
    answer = post(handlers, request_with_params(code_uri, f'{{"a": {nested(depth)}}}'))
    assert answer.status_code == 400
    assert "levels" in error_of(answer)
    nothing_rented(service)


def test_a_deeply_nested_queue_message_is_recorded_as_refused_not_retried(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    body = request_with_params(code_uri, f'{{"a": {nested(3000)}}}')
    handlers.job_queue_message(func.QueueMessage(id="deep-1", body=body))
    [rejection] = service.rejections()
    assert (rejection.id, "levels" in rejection.reason) == ("deep-1", True)
    nothing_rented(service)


def test_deep_params_given_as_data_are_refused_before_anything_is_saved(code_dir: Path) -> None:
    params: Any = "leaf"
    for _ in range(400):
        params = {"a": params}
    with pytest.raises(SpecError, match=r"params.*levels"):
        validate_spec(
            {"kind": "train", "code": str(code_dir), "entrypoint": "j.py", "params": params}
        )


def test_params_larger_than_the_limit_are_refused_naming_it(code_dir: Path) -> None:
    params = {f"k{i}": "x" * 1000 for i in range(1100)}
    with pytest.raises(SpecError, match=r"params.*bytes"):
        validate_spec(
            {"kind": "train", "code": str(code_dir), "entrypoint": "j.py", "params": params}
        )


@pytest.mark.parametrize(
    "document",
    [
        "kind: train\nparams: {a: " + nested(5000) + "}\n",
        "kind: train\nparams:\n" + "".join(f"{'  ' * (i + 1)}k:\n" for i in range(300)),
        # a billion laughs: aliases that expand to 10**7 leaves when walked
        "kind: train\ncode: ./c\nentrypoint: j.py\n"
        + "params:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"  {c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, c in zip("abcdef", "bcdefg", strict=True)
        ),
    ],
    ids=["flow", "block", "aliases"],
)
def test_a_deep_or_exploding_spec_file_is_refused_naming_the_limit(
    tmp_path: Path, document: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(document)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert "levels" in str(caught.value) or "bytes" in str(caught.value)


# --- (10) digits that are not ASCII ------------------------------------------------------------


def test_a_non_ascii_digit_log_offset_is_a_400(handlers: Handlers) -> None:
    request = func.HttpRequest(
        "GET",
        "http://localhost/api/jobs/x/logs",
        body=b"",
        route_params={"id": "x"},
        params={"offset": "\u00b2"},
    )
    answer = handlers.http_logs(request)
    assert answer.status_code == 400
    assert "offset" in error_of(answer)


def raw_request(url: str, head: bytes) -> bytes:
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("with_key", [True, False])
def test_a_non_ascii_content_length_is_a_400_with_a_reason(
    make_host: MakeHost,  # noqa: F811
    with_key: bool,
) -> None:
    host = make_host()
    key = f"x-functions-key: {host.key}\r\n".encode() if with_key else b""
    head = b"POST /api/jobs HTTP/1.1\r\nHost: x\r\n" + key + b"Content-Length: \xb2\r\n\r\n"
    answer = raw_request(host.url, head)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"Content-Length" in answer.partition(b"\r\n\r\n")[2]
    assert host.service.store.list() == []


# --- (11) symlinks out of a folder -------------------------------------------------------------


def test_a_code_file_linking_outside_its_folder_is_refused_naming_it(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the service's secret")
    write_script(code_dir, "print('hi')\n")
    (code_dir / "peek.txt").symlink_to(secret)
    with pytest.raises(SpecError, match=r"peek.txt"):
        service.submit(spec_for(code_dir))
    nothing_rented(service)
    assert list(service.artifacts.list("runs/")) == []


def test_a_code_link_that_stays_inside_its_folder_is_followed(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print(open('alias.txt').read())\n")
    (code_dir / "data.txt").write_text("inside")
    (code_dir / "alias.txt").symlink_to(code_dir / "data.txt")
    job = finish(service, service.submit(spec_for(code_dir)).job.id)
    assert job.state is JobState.SUCCEEDED
    assert "inside" in log_of(service, job.id)


def test_an_output_linking_outside_the_output_folder_is_skipped_and_said_in_the_log(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    write_script(
        code_dir,
        f"""
        import os, pathlib
        out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
        (out / "kept.txt").write_text("result")
        os.symlink({str(secret)!r}, out / "stolen.txt")
        """,
    )
    job = finish(service, service.submit(spec_for(code_dir)).job.id)
    assert job.state is JobState.SUCCEEDED
    assert [k.rsplit("/", 1)[1] for k in job.outputs] == ["kept.txt"]
    assert "stolen.txt" in log_of(service, job.id)
    assert all(
        b"secret" not in (Path(s.key).name.encode()) for s in service.artifacts.list("runs/")
    )


# --- (7) idempotency keys per source -----------------------------------------------------------


def test_an_http_caller_cannot_claim_the_schedules_key(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    due = datetime(2030, 1, 2, 2, 0, 0, tzinfo=UTC)
    claim = {"kind": "train", "code": code_uri, "entrypoint": "job.py"}
    claim["idempotency_key"] = f"cron:nightly@{due.isoformat()}"
    assert post(handlers, json.dumps(claim).encode()).status_code == 201
    [fired] = fire_schedules(service, handlers.rules, due)
    assert fired.created
    assert fired.job.source == "schedule nightly"
    for job in service.list():
        finish(service, job.id)


def test_a_queue_message_cannot_read_back_an_http_callers_job(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    body = json.dumps({"kind": "train", "code": code_uri, "entrypoint": "job.py"}).encode()
    alice = json.loads(post(handlers, body, **{"Idempotency-Key": "alice-1"}).get_body())
    forged = json.dumps({**json.loads(body), "idempotency_key": "http:alice-1"})
    handlers.job_queue_message(func.QueueMessage(id="q-1", body=forged))
    mine = [job for job in service.list() if job.id != alice["id"]]
    assert [job.source for job in mine] == ["queue message q-1"]
    for job in service.list():
        finish(service, job.id)


# --- (13) SKUs, rule templates, HTTP refusals, derived names, every problem ---------------------


def test_a_sku_that_is_no_name_is_refused_by_the_spec(code_dir: Path) -> None:
    data = {"kind": "train", "code": str(code_dir), "entrypoint": "j.py"}
    with pytest.raises(SpecError, match=r"compute.skus"):
        validate_spec({**data, "compute": {"skus": ["Standard_$(reboot)"]}})


def test_local_compute_refuses_skus_instead_of_ignoring_them(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('never runs')\n")
    with pytest.raises(SpecError, match="local compute has no SKUs"):
        service.submit(spec_for(code_dir, compute={"skus": ["Standard_NC6s_v3"]}))
    nothing_rented(service)


@pytest.mark.parametrize("trigger", ["blob: incoming/{name}.csv", "schedule: '0 0 2 * * *'"])
def test_a_rule_whose_template_is_no_job_is_refused_at_load_naming_rule_and_field(
    trigger: str,
) -> None:
    job = "{kind: train, code: ./c, entry_point: t.py}"
    text = f"rules:\n  - name: typo\n    {trigger}\n    job: {job}\n"
    with pytest.raises(RuleError) as caught:
        Rules.parse(text, base=Path("/srv"))
    assert "rule 'typo'" in str(caught.value)
    assert "entry_point" in str(caught.value)


def test_a_queue_rule_template_is_checked_for_what_it_gives(tmp_path: Path) -> None:
    Rules.parse("rules:\n  - name: q\n    queue: jobs\n    job: {params: {a: 1}}\n", base=tmp_path)
    with pytest.raises(RuleError, match=r"(?s)rule 'q'.*gpus"):
        Rules.parse(
            "rules:\n  - name: q\n    queue: jobs\n    job: {compute: {gpus: many}}\n",
            base=tmp_path,
        )


def test_an_http_refusal_is_recorded_and_listed_as_well_as_answered(handlers: Handlers) -> None:
    answer = post(handlers, b"{nope", **{"Idempotency-Key": "ui-9"})
    assert answer.status_code == 400
    listed = handlers.http_rejected(
        func.HttpRequest("GET", "http://localhost/api/rejected", body=b"")
    )
    [rejection] = json.loads(listed.get_body())
    assert (rejection["source"], rejection["id"]) == ("http", "ui-9")
    assert "not JSON" in rejection["reason"]


def test_a_file_name_that_breaks_the_job_name_gets_a_derived_one(
    handlers: Handlers, service: Service
) -> None:
    upload(service.artifacts, "incoming/train/my batch (2).csv", b"a\n1\n")
    handlers.intake.blob("incoming/train/my batch (2).csv", None)
    [job] = service.list()
    assert job.spec.name == "train-my-batch-2"
    assert service.rejections() == []
    finish(service, job.id)


def test_a_refusal_lists_every_problem_with_its_field() -> None:
    bad = {
        "kind": "train",
        "entrypoint": "../../etc/passwd",
        "args": ["a\x00b"],
        "model": "ghost",
        "compute": {"skus": ["Standard_$(reboot)"]},
    }
    with pytest.raises(SpecError) as caught:
        validate_spec(bad)
    message = str(caught.value)
    for field in ("code", "entrypoint", "args.0", "model", "compute.skus.0"):
        assert f"  - {field}:" in message, message


def test_a_blob_event_without_a_name_is_recorded_as_refused(
    handlers: Handlers, service: Service
) -> None:
    handlers.blob_created(InputStream(data=b"", name="", blob_properties={"ETag": "0x1"}))
    [rejection] = service.rejections()
    assert rejection.source == "blob"
    assert "name" in rejection.reason
    nothing_rented(service)


def test_the_webhook_says_a_redelivery_made_no_new_job(
    make_host: MakeHost,  # noqa: F811
    call: Call,  # noqa: F811
) -> None:
    from devhost.test_eventgrid import EVENT_GRID_BLOB_CREATED, pointed_at, webhook

    host = make_host()
    upload(host.service.artifacts, "incoming/train/day1.csv", b"a,b\n1,2\n")
    delivery = pointed_at(EVENT_GRID_BLOB_CREATED, host, "incoming/train/day1.csv")
    first = call(host, "POST", webhook(), delivery).json()["events"][0]
    again = call(host, "POST", webhook(), delivery).json()["events"][0]
    assert "delivered" in first
    assert again["duplicate"] == "incoming/train/day1.csv"
    assert "delivered" not in again
    assert len(host.service.store.list()) == 1


def test_the_request_parser_refuses_deep_text_without_recursing() -> None:
    with pytest.raises(SpecError, match="levels"):
        parse_request(nested(100_000).encode(), what="request body")

"""Every function, invoked the way the Functions host invokes it: real azure.functions objects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.blob import InputStream
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest

from drive import finish, upload, write_script
from ephemerid.artifacts import upload_dir
from ephemerid.functions import register
from ephemerid.functions.handlers import Handlers
from ephemerid.record import ComputeState, JobState
from ephemerid.rules import Rules
from ephemerid.service import Service

RULES = """
rules:
  - name: train-on-upload
    blob: incoming/train/{name}.csv
    job:
      kind: train
      code: ./code
      entrypoint: job.py
      inputs: {data: "{uri}"}
  - name: hourly
    schedule: "0 0 * * * *"
    job: {kind: train, code: ./code, entrypoint: job.py}
"""


@pytest.fixture
def functions(service: Service, code_dir: Path) -> dict[str, Callable[..., Any]]:
    """The registered user functions by name, over this test's service."""
    write_script(code_dir, "print('trained')\n")
    rules = Rules.parse(RULES, base=code_dir.parent)
    handlers = Handlers(service, rules)
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, lambda: handlers)
    return {f.get_function_name(): f.get_user_function() for f in app.get_functions()}


@pytest.fixture
def code_uri(service: Service, code_dir: Path) -> str:
    write_script(code_dir, "print('trained')\n")
    upload_dir(service.artifacts, code_dir, "code/app")
    return service.artifacts.uri("code/app")


def blob_event(service: Service, key: str, etag: str = "0x1") -> InputStream:
    return InputStream(
        data=b"", name=key, uri=service.artifacts.uri(key), length=0,
        blob_properties={"ETag": f'"{etag}"'},
    )  # fmt: skip


def bus_message(body: bytes | str, message_id: str = "m-1") -> ServiceBusMessage:
    raw = body.encode() if isinstance(body, str) else body
    return ServiceBusMessage(
        body=raw, message_id=message_id, application_properties={}, user_properties={}
    )


def request(method: str, path: str, body: bytes = b"", **extra: Any) -> func.HttpRequest:
    return func.HttpRequest(method, f"http://localhost/api/{path}", body=body, **extra)


def test_every_function_is_registered_with_its_trigger() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, lambda: pytest.fail("no event, no handlers"))
    triggers = {f.get_function_name(): f.get_trigger().get_dict_repr() for f in app.get_functions()}
    assert {name: t["type"] for name, t in triggers.items() if t["type"] != "httpTrigger"} == {
        "on_blob_created": "blobTrigger",
        "on_run_result": "blobTrigger",
        "on_job_message": "serviceBusTrigger",
        "on_job_queue_message": "queueTrigger",
        "tick": "timerTrigger",
    }
    assert triggers["on_blob_created"]["source"] == "EventGrid"
    assert triggers["on_run_result"]["source"] == "EventGrid"
    assert triggers["on_run_result"]["path"].endswith("/{job}/result.json")
    assert len(triggers["tick"]["schedule"].split()) == 6


def test_no_http_function_is_anonymous() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    register(app, lambda: pytest.fail("no event, no handlers"))
    http = [f.get_trigger().get_dict_repr() for f in app.get_functions()
            if f.get_trigger().get_dict_repr()["type"] == "httpTrigger"]  # fmt: skip
    assert {(t["route"], t["methods"][0].value) for t in http} == {
        ("jobs", "POST"), ("jobs", "GET"), ("jobs/{id}", "GET"), ("jobs/{id}/cancel", "POST"),
        ("jobs/{id}/logs", "GET"), ("rejected", "GET"), ("serving/deploy", "POST"),
        ("ui/{*path}", "GET"),
    }  # fmt: skip
    levels = {t["route"]: t["authLevel"].value for t in http}
    assert set(levels.values()) == {"function", "admin"}
    assert [r for r, level in levels.items() if level == "admin"] == ["serving/deploy"]


def test_a_dropped_blob_makes_one_job_however_often_it_is_delivered(
    functions: dict[str, Callable[..., Any]], service: Service
) -> None:
    upload(service.artifacts, "incoming/train/day1.csv", b"a,b\n1,2\n")
    for _ in range(3):
        functions["on_blob_created"](blob_event(service, "incoming/train/day1.csv"))
    jobs = service.store.list()
    assert len(jobs) == 1
    assert jobs[0].source == "blob incoming/train/day1.csv (rule train-on-upload)"
    finished = finish(service, jobs[0].id)
    assert finished.state is JobState.SUCCEEDED


def test_the_result_blob_completes_the_job_and_releases_compute(
    functions: dict[str, Callable[..., Any]], service: Service
) -> None:
    upload(service.artifacts, "incoming/train/day2.csv", b"a\n1\n")
    functions["on_blob_created"](blob_event(service, "incoming/train/day2.csv"))
    job = service.store.list()[0]
    result = f"runs/{job.id}/result.json"
    from drive import wait_for

    wait_for(lambda: service.artifacts.stat(result), "the runner's result")
    functions["on_run_result"](blob_event(service, result))
    done = service.store.get(job.id)
    assert (done.state, done.compute_state) == (JobState.SUCCEEDED, ComputeState.RELEASED)


@pytest.mark.parametrize(
    "key", ["incoming/train/../../etc/passwd.csv", "incoming/train\\x.csv", "incoming//x.csv"]
)
def test_a_blob_name_that_escapes_its_prefix_is_recorded_as_rejected(
    functions: dict[str, Callable[..., Any]], service: Service, key: str
) -> None:
    functions["on_blob_created"](blob_event(service, key))
    assert service.store.list() == []
    [rejection] = service.rejections()
    assert rejection.source == "blob"
    assert "refused" in rejection.reason


def test_a_service_bus_job_request_makes_a_job_keyed_by_its_message_id(
    functions: dict[str, Callable[..., Any]], service: Service, code_uri: str
) -> None:
    body = json.dumps({"kind": "train", "code": code_uri, "entrypoint": "job.py"})
    functions["on_job_message"](bus_message(body, "order-42"))
    functions["on_job_message"](bus_message(body, "order-42"))  # redelivered
    [job] = service.store.list()
    assert job.key == "servicebus:order-42"
    assert finish(service, job.id).state is JobState.SUCCEEDED


def test_a_storage_queue_request_with_its_own_idempotency_key_uses_it(
    functions: dict[str, Callable[..., Any]], service: Service, code_uri: str
) -> None:
    body = {"kind": "train", "code": code_uri, "entrypoint": "job.py", "idempotency_key": "nightly"}
    for message_id in ("q-1", "q-2"):
        functions["on_job_queue_message"](func.QueueMessage(id=message_id, body=json.dumps(body)))
    [job] = service.store.list()
    assert job.key == "queue:nightly"  # the sender's key, in its source's namespace
    finish(service, job.id)


MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"train please"),
    ("truncated json", b'{"kind": "train"'),
    ("invalid utf-8", b"\xff\xfe\x00{"),
    ("a list", b"[1, 2]"),
    ("a string", b'"train"'),
    ("a number", b"42"),
    ("null", b"null"),
    ("empty object", b"{}"),
    ("unknown kind", b'{"kind": "sweep2", "code": "file:///c", "entrypoint": "j.py"}'),
    ("kind wrong type", b'{"kind": 3, "code": "file:///c", "entrypoint": "j.py"}'),
    ("missing entrypoint", b'{"kind": "train", "code": "file:///c"}'),
    ("entrypoint escapes", b'{"kind": "train", "code": "file:///c", "entrypoint": "../x.py"}'),
    ("entrypoint not python", b'{"kind": "train", "code": "file:///c", "entrypoint": "run.sh"}'),
    ("unknown field", b'{"kind": "train", "code": "file:///c", "entrypoint": "j.py", "x": 1}'),
    ("params not a map", b'{"kind": "train", "code": "file:///c", "entrypoint": "j.py", '
                         b'"params": [1]}'),
    ("gpus negative", b'{"kind": "train", "code": "file:///c", "entrypoint": "j.py", '
                      b'"compute": {"gpus": -1}}'),
    ("bad spot", b'{"kind": "train", "code": "file:///c", "entrypoint": "j.py", '
                 b'"compute": {"spot": "maybe"}}'),
    ("bad runtime", b'{"kind": "train", "code": "file:///c", "entrypoint": "j.py", '
                    b'"compute": {"max_runtime": "forever"}}'),
    ("predict without model", b'{"kind": "predict", "code": "file:///c", "entrypoint": "j.py"}'),
    ("model that does not exist", b'{"kind": "predict", "code": "file:///c", '
                                  b'"entrypoint": "j.py", "model": "ghost@production"}'),
    ("host folder as code", b'{"kind": "train", "code": "/etc", "entrypoint": "j.py"}'),
    ("input outside bucket", b'{"kind": "train", "code": "file:///c", "entrypoint": "j.py", '
                             b'"inputs": {"d": "file:///etc/passwd"}}'),
    ("huge body", b'{"kind": "train", "pad": "' + b"x" * 300_000 + b'"}'),
    ("unknown backend", b'{"kind": "train", "code": "file:///c", "entrypoint": "j.py", '
                        b'"compute": {"backend": "mainframe"}}'),
]  # fmt: skip


@pytest.mark.parametrize("function", ["on_job_message", "on_job_queue_message"])
def test_malformed_requests_are_each_rejected_once_with_a_reason_and_rent_nothing(
    functions: dict[str, Callable[..., Any]], service: Service, function: str
) -> None:
    for index, (_, body) in enumerate(MALFORMED):
        message_id = f"bad-{index}"
        if function == "on_job_message":
            functions[function](bus_message(body, message_id))
        else:
            functions[function](func.QueueMessage(id=message_id, body=body))
    assert service.store.list() == []
    assert all(not b.list_owned() for b in service.backends.values())
    rejections = {r.id: r.reason for r in service.rejections(limit=1000)}
    assert set(rejections) == {f"bad-{i}" for i in range(len(MALFORMED))}
    assert all(rejections.values())
    assert "not JSON" in rejections["bad-1"]
    assert "entrypoint" in rejections["bad-11"]
    assert "ghost" in rejections["bad-20"]
    assert "artifact URI" in rejections["bad-21"]


def test_the_tick_fires_a_due_schedule_once_however_often_it_runs(
    functions: dict[str, Callable[..., Any]], service: Service
) -> None:
    for _ in range(3):
        functions["tick"](TimerRequest(past_due=False))
    jobs = service.store.list()
    assert len(jobs) == 1
    assert jobs[0].key.startswith("cron:hourly@")
    finish(service, jobs[0].id)


def test_http_submit_then_get_logs_and_list(
    functions: dict[str, Callable[..., Any]], service: Service, code_uri: str
) -> None:
    body = json.dumps({"kind": "train", "code": code_uri, "entrypoint": "job.py"}).encode()
    headers = {"Idempotency-Key": "ui-7"}
    created = functions["submit_job"](request("POST", "jobs", body, headers=headers))
    again = functions["submit_job"](request("POST", "jobs", body, headers=headers))
    assert (created.status_code, again.status_code) == (201, 200)
    job_id = json.loads(created.get_body())["id"]
    assert json.loads(again.get_body())["id"] == job_id
    finish(service, job_id)

    got = functions["get_job"](request("GET", f"jobs/{job_id}", route_params={"id": job_id}))
    assert json.loads(got.get_body())["state"] == "SUCCEEDED"
    logs = functions["job_logs"](request("GET", f"jobs/{job_id}/logs", route_params={"id": job_id}))
    assert b"trained" in logs.get_body()
    assert int(logs.headers["X-Next-Offset"]) == len(logs.get_body())
    listed = functions["list_jobs"](request("GET", "jobs", params={"state": "succeeded"}))
    assert [j["id"] for j in json.loads(listed.get_body())] == [job_id]


@pytest.mark.parametrize(
    ("name", "req", "status", "says"),
    [
        ("submit_job", request("POST", "jobs", b"{nope"), 400, "not JSON"),
        ("list_jobs", request("GET", "jobs", params={"state": "sleepy"}), 400, "sleepy"),
        ("get_job", request("GET", "jobs/x", route_params={"id": "x"}), 404, "no job 'x'"),
        ("cancel_job", request("POST", "jobs/x/cancel", route_params={"id": "x"}), 404, "'x'"),
        ("job_logs", request("GET", "jobs/x/logs", route_params={"id": "x"}), 404, "'x'"),
    ],
)
def test_http_errors_are_json_with_a_reason_and_a_4xx(
    functions: dict[str, Callable[..., Any]], name: str, req: Any, status: int, says: str
) -> None:
    response = functions[name](req)
    assert response.status_code == status
    assert says in json.loads(response.get_body())["error"]


def test_http_cancel_releases_the_compute(
    functions: dict[str, Callable[..., Any]], service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "import time\ntime.sleep(60)\n")
    upload_dir(service.artifacts, code_dir, "code/slow")
    body = {"kind": "train", "code": service.artifacts.uri("code/slow"), "entrypoint": "job.py"}
    created = functions["submit_job"](request("POST", "jobs", json.dumps(body).encode()))
    job_id = json.loads(created.get_body())["id"]
    cancelled = functions["cancel_job"](
        request("POST", f"jobs/{job_id}/cancel", route_params={"id": job_id})
    )
    data = json.loads(cancelled.get_body())
    assert (data["state"], data["compute_state"]) == ("CANCELLED", "released")
    assert all(not b.list_owned() for b in service.backends.values())


def test_rejected_requests_are_listed_over_http(
    functions: dict[str, Callable[..., Any]],
) -> None:
    functions["on_job_message"](bus_message(b"not json", "poison-1"))
    listed = json.loads(functions["list_rejected"](request("GET", "rejected")).get_body())
    assert [(r["source"], r["id"]) for r in listed] == [("servicebus", "poison-1")]


def test_a_blob_event_without_an_etag_uses_the_blobs_own_so_new_uploads_are_new_jobs(
    functions: dict[str, Callable[..., Any]], service: Service
) -> None:
    key = "incoming/train/same-size.csv"
    bare = InputStream(data=b"", name=key, uri=service.artifacts.uri(key), length=4)
    upload(service.artifacts, key, b"a\n1\n")
    functions["on_blob_created"](bare)
    functions["on_blob_created"](bare)  # redelivered: same blob, same job
    upload(service.artifacts, key, b"a\n2\n")  # a new upload of the same size
    functions["on_blob_created"](bare)
    jobs = service.store.list()
    assert len(jobs) == 2
    for job in jobs:
        finish(service, job.id)


def test_the_queue_rule_follows_the_queue_the_trigger_binds_to(
    service: Service, code_dir: Path, code_uri: str
) -> None:
    rules = Rules.parse(
        "rules:\n  - name: from-app\n    queue: app-jobs\n    job: {params: {source: app}}\n",
        base=code_dir.parent,
    )
    handlers = Handlers(service, rules, jobs_queue="app-jobs")
    body = json.dumps({"kind": "train", "code": code_uri, "entrypoint": "job.py"})
    handlers.job_message(bus_message(body, "renamed-1"))
    [job] = service.store.list()
    assert job.spec.params == {"source": "app"}
    finish(service, job.id)


def test_http_submits_a_sweep_whose_trials_the_timer_and_result_events_move_on(
    functions: dict[str, Callable[..., Any]], service: Service, code_uri: str
) -> None:
    trial = {"code": code_uri, "entrypoint": "job.py"}
    search = {"method": "grid", "space": {"n": [1, 2]}, "max_parallel": 1}
    body = json.dumps({"kind": "sweep", "name": "http", "trial": trial, "search": search})
    headers = {"Idempotency-Key": "sweep-7"}
    created = functions["submit_job"](request("POST", "jobs", body.encode(), headers=headers))
    again = functions["submit_job"](request("POST", "jobs", body.encode(), headers=headers))
    sweep_id = json.loads(created.get_body())["id"]

    assert (created.status_code, again.status_code) == (201, 200)
    assert json.loads(again.get_body())["id"] == sweep_id
    for _ in range(600):  # each timer tick, and each result as its blob event, as Azure would
        functions["tick"](TimerRequest())
        for job in service.list():
            if job.parent == sweep_id and service.has_result(job.id):
                functions["on_run_result"](blob_event(service, f"runs/{job.id}/result.json"))
        if service.get(sweep_id).settled:
            break
        time.sleep(0.1)
    got = json.loads(
        functions["get_job"](
            request("GET", f"jobs/{sweep_id}", route_params={"id": sweep_id})
        ).get_body()
    )

    assert (got["kind"], got["state"]) == ("sweep", "SUCCEEDED")
    assert [t["state"] for t in got["sweep"]["trials"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert sorted(t["params"]["n"] for t in got["sweep"]["trials"]) == [1, 2]

"""Who owns a job: each caller sees, cancels and builds on its own jobs only; an admin sees all.

Through real ``azure.functions.HttpRequest`` objects on ``Handlers`` (with a keys file naming
alice's and bob's keys and a master key, as the dev host writes it) and through the dev host's
real HTTP server with two named keys.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devhost.conftest import Call, MakeHost, call, clock, make_host, project  # noqa: F401
from drive import Gate, finish, text_of, wait_for, write_script
from ephemerid.artifacts import upload_dir
from ephemerid.functions.callers import Caller
from ephemerid.functions.handlers import Handlers
from ephemerid.rules import Rules
from ephemerid.service import Service

KEYS = {
    "alice": "alice-key-0123456789abcdef",
    "bob": "bob-key-0123456789abcdef",
    "master": "a-function-key-named-master-0123",  # a name, not the master key
}
MASTER = "master-key-0123456789abcdef"
SECRET = "s3cr3t-token-value-42"
SCRIPT = """
import json, os, pathlib
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "seen.txt").write_text(str(params.get("token", "none")))
print("token is", params.get("token", "none"), flush=True)
"""


@pytest.fixture
def handlers(service: Service, code_dir: Path, tmp_path: Path) -> Handlers:
    """Handlers as the function app builds them, over a keys file with two named keys."""
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"masterKey": MASTER, "functionKeys": KEYS}))
    rules = Rules.parse("rules: []", base=code_dir.parent)
    return Handlers(service, rules, keys_file=str(keys_file), keyless=Caller("key:none"))


@pytest.fixture
def code_uri(service: Service, code_dir: Path) -> str:
    write_script(code_dir, SCRIPT)
    upload_dir(service.artifacts, code_dir, "code/app")
    return service.artifacts.uri("code/app")


def as_(who: str) -> dict[str, str]:
    return {"x-functions-key": MASTER if who == "admin" else KEYS[who]}


def ask(handler: Any, who: str, path: str, body: bytes = b"", **extra: Any) -> func.HttpResponse:
    method = "POST" if body or path.endswith("cancel") else "GET"
    headers = {**as_(who), **extra.pop("headers", {})}
    req = func.HttpRequest(
        method, f"http://localhost/api/{path}", body=body, headers=headers, **extra
    )
    return handler(req)  # type: ignore[no-any-return]


def submit(handlers: Handlers, who: str, spec: dict[str, Any], **headers: str) -> Any:
    answer = ask(handlers.http_submit, who, "jobs", json.dumps(spec).encode(), headers=headers)
    return answer.status_code, json.loads(answer.get_body())


def job_spec(code_uri: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "train", "code": code_uri, "entrypoint": "job.py", **fields}


def on_job(handlers: Handlers, who: str, job_id: str, verb: str = "") -> func.HttpResponse:
    handler = {"": handlers.http_get, "logs": handlers.http_logs, "cancel": handlers.http_cancel}
    path = f"jobs/{job_id}/{verb}" if verb else f"jobs/{job_id}"
    return ask(handler[verb], who, path, route_params={"id": job_id})


def test_alice_cannot_list_read_follow_or_cancel_bobs_job_and_the_admin_can(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    status, bobs = submit(handlers, "bob", job_spec(code_uri))
    assert status == 201
    assert bobs["owner"] == "key:bob"
    finish(service, bobs["id"])
    unknown = on_job(handlers, "alice", "train-nosuchjob")

    for verb in ("", "logs", "cancel"):
        answer = on_job(handlers, "alice", bobs["id"], verb)
        assert answer.status_code == 404, verb
        said = json.loads(answer.get_body())["error"]
        assert said == json.loads(unknown.get_body())["error"].replace(
            "train-nosuchjob", bobs["id"]
        )
    assert json.loads(ask(handlers.http_list, "alice", "jobs").get_body()) == []
    assert service.get(bobs["id"]).state.value == "SUCCEEDED"  # alice's cancel did nothing

    assert on_job(handlers, "bob", bobs["id"], "logs").status_code == 200
    for who in ("bob", "admin"):
        listed = json.loads(ask(handlers.http_list, who, "jobs").get_body())
        assert [j["id"] for j in listed] == [bobs["id"]]
        assert on_job(handlers, who, bobs["id"]).status_code == 200


def test_an_entra_principal_owns_its_jobs_only_behind_app_service_authentication(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    claims = {"claims": [{"typ": "roles", "val": "ephemerid.admin"}]}
    admin_claims = base64.b64encode(json.dumps(claims).encode()).decode()
    carol = {"X-MS-CLIENT-PRINCIPAL-ID": "0000-carol", "X-MS-CLIENT-PRINCIPAL-NAME": "carol@x"}
    _, forged = submit(handlers, "alice", job_spec(code_uri), **carol)
    assert forged["owner"] == "key:alice"  # not behind App Service: the headers are anyone's

    handlers.trust_principal = True
    _, carols = submit(handlers, "alice", job_spec(code_uri), **carol)
    assert carols["owner"] == "entra:0000-carol"
    dave = {"X-MS-CLIENT-PRINCIPAL-ID": "0000-dave"}
    looked = ask(
        handlers.http_get, "bob", "jobs/x", route_params={"id": carols["id"]}, headers=dave
    )
    assert looked.status_code == 404
    ops = {**dave, "X-MS-CLIENT-PRINCIPAL": admin_claims}
    listed = ask(handlers.http_list, "bob", "jobs", headers=ops)
    assert sorted(j["id"] for j in json.loads(listed.get_body())) == sorted(
        [forged["id"], carols["id"]]
    )
    for job in service.list():
        finish(service, job.id)


def test_two_callers_with_the_same_idempotency_key_get_two_jobs(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    _, alices = submit(handlers, "alice", job_spec(code_uri), **{"Idempotency-Key": "nightly-1"})
    _, bobs = submit(handlers, "bob", job_spec(code_uri), **{"Idempotency-Key": "nightly-1"})
    assert alices["id"] != bobs["id"]
    assert (alices["owner"], bobs["owner"]) == ("key:alice", "key:bob")
    for job in (alices, bobs):
        finish(service, job["id"])


def test_a_queue_message_is_owned_by_its_queue(handlers: Handlers, service: Service) -> None:
    handlers.job_queue_message(func.QueueMessage(id="q-1", body=b"{not json"))
    assert [r.owner for r in service.rejections()] == ["queue"]
    listed = json.loads(ask(handlers.http_rejected, "alice", "rejected").get_body())
    assert listed == []


def test_a_job_takes_only_its_own_owners_runs_as_input(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    _, bobs = submit(handlers, "bob", job_spec(code_uri))
    finish(service, bobs["id"])
    outputs = service.artifacts.uri(f"runs/{bobs['id']}/outputs")

    status, refused = submit(handlers, "alice", job_spec(code_uri, inputs={"prev": outputs}))
    assert status == 400
    assert "inputs.prev" in refused["error"] and "not yours" in refused["error"]
    for everything in ("runs", "runs/_code", f"runs/{bobs['id']}"):
        uri = service.artifacts.uri(everything)
        status, refused = submit(handlers, "bob", job_spec(code_uri, inputs={"all": uri}))
        assert status == 400, everything
        assert "inputs.all" in refused["error"]
    assert [j.id for j in service.list()] == [bobs["id"]]  # nothing refused was stored

    for who in ("bob", "admin"):
        status, taken = submit(handlers, who, job_spec(code_uri, inputs={"prev": outputs}))
        assert status == 201, taken
        finish(service, taken["id"])


def test_refusals_are_the_senders_own_cut_short_and_with_secrets_redacted(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    leaked = {
        "kind": "train",
        "code": code_uri,
        "entrypoint": "job.py",
        "params": {"api_password": SECRET, "token": SECRET, "notes": "x" * 5000},
        "secret_params": ["token"],
        "unknown_field": 1,
    }
    assert submit(handlers, "alice", leaked, **{"Idempotency-Key": "a-1"})[0] == 400
    assert submit(handlers, "bob", {"kind": "nope"}, **{"Idempotency-Key": "b-1"})[0] == 400

    alices = json.loads(ask(handlers.http_rejected, "alice", "rejected").get_body())
    assert [r["id"] for r in alices] == ["a-1"]
    assert len(alices[0]["body"]) <= 200
    assert SECRET not in alices[0]["body"]
    stored = [text_of(service.artifacts, item.key) for item in service.artifacts.list("rejected/")]
    assert not any(SECRET in text for text in stored)
    everyone = json.loads(ask(handlers.http_rejected, "admin", "rejected").get_body())
    assert sorted(r["id"] for r in everyone) == ["a-1", "b-1"]


def test_a_secret_param_reaches_the_script_and_nothing_else(
    handlers: Handlers, service: Service, code_uri: str
) -> None:
    spec = job_spec(code_uri, params={"token": SECRET, "lr": 0.1}, secret_params=["token"])
    status, answered = submit(handlers, "alice", spec)
    assert status == 201
    done = finish(service, answered["id"])
    assert done.state.value == "SUCCEEDED", done.reason

    seen = text_of(service.artifacts, f"runs/{done.id}/outputs/seen.txt")
    assert seen == SECRET  # the script got the real value
    log = on_job(handlers, "alice", done.id, "logs").get_body().decode()
    got = on_job(handlers, "alice", done.id).get_body().decode()
    for shown in (json.dumps(answered), log, got, service.get(done.id).dumps()):
        assert SECRET not in shown
    assert "token is ***" in log
    assert service.get(done.id).spec.params == {"token": "***", "lr": 0.1}


def test_over_the_dev_hosts_http_each_named_key_sees_its_own_jobs(
    make_host: MakeHost,  # noqa: F811
    call: Call,  # noqa: F811
    tmp_path: Path,
    code_dir: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "devhost-keys.json").write_text(json.dumps({"functionKeys": KEYS}))
    host = make_host(home=home)
    master = json.loads((home / "devhost-keys.json").read_text())["masterKey"]
    write_script(code_dir, SCRIPT)
    upload_dir(host.service.artifacts, code_dir, "code/app")
    spec = job_spec(host.service.artifacts.uri("code/app"))

    sent = call(host, "POST", "/api/jobs", json.dumps(spec).encode(), key=KEYS["alice"])
    assert sent.status == 201, sent.body
    job_id = sent.json()["id"]
    assert sent.json()["owner"] == "key:alice"

    for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/logs"):
        assert call(host, "GET", path, key=KEYS["bob"]).status == 404, path
    assert call(host, "POST", f"/api/jobs/{job_id}/cancel", key=KEYS["bob"]).status == 404
    assert call(host, "GET", "/api/jobs", key=KEYS["bob"]).json() == []
    for key in (KEYS["alice"], master):
        assert call(host, "GET", f"/api/jobs/{job_id}", key=key).status == 200
        assert [j["id"] for j in call(host, "GET", "/api/jobs", key=key).json()] == [job_id]
    assert call(host, "POST", f"/api/jobs/{job_id}/cancel", key=master).status == 200


def test_a_running_jobs_progress_is_shown_to_its_owner_over_http_and_to_no_one_else(
    handlers: Handlers, service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, HELD_METRIC, "held.py")
    upload_dir(service.artifacts, code_dir, "code/held")
    spec = {**job_spec(service.artifacts.uri("code/held")), "entrypoint": "held.py"}
    _, bobs = submit(handlers, "bob", {**spec, "params": gate.params})

    def shown() -> Any:
        answer = json.loads(on_job(handlers, "bob", bobs["id"]).get_body())
        return answer if "loss" in answer["progress"]["metrics"] else None

    try:
        seen = wait_for(shown, "bob's running job to show its metric", timeout=60)
        hidden = on_job(handlers, "alice", bobs["id"])
        admin = json.loads(on_job(handlers, "admin", bobs["id"]).get_body())
    finally:
        gate.open()
        finish(service, bobs["id"])

    assert seen["state"] == "RUNNING" and seen["started_at"] is not None
    loss = seen["progress"]["metrics"]["loss"]
    assert (loss["value"], loss["step"]) == (0.5, 3)
    assert hidden.status_code == 404 and "progress" not in hidden.get_body().decode()
    assert admin["progress"]["metrics"]["loss"]["step"] == 3


HELD_METRIC = """
import json, os, pathlib, time
from ephemerid import track

gate = pathlib.Path(json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())["gate"])
track.log_metric("loss", 0.5, step=3)
while not (gate / "open").exists():
    time.sleep(0.05)
"""

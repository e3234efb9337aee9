"""The HTTP functions over real HTTP: routes, methods, the function key, and the jobs API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devhost.conftest import Call, MakeHost
from drive import wait_for, write_script
from ephemerid.artifacts import upload_dir
from ephemerid.devhost import DevHost
from ephemerid.devhost.web import MAX_BODY

SLOW_JOB = """
import time
print("started", flush=True)
time.sleep(60)
"""


def code_artifact(host: DevHost, tmp_path: Path) -> str:
    """A code folder uploaded to the bucket, as an app sending a job request would."""
    folder = tmp_path / "app-code"
    folder.mkdir()
    write_script(folder, SLOW_JOB, "slow.py")
    upload_dir(host.service.artifacts, folder, "code/app")
    return host.service.artifacts.uri("code/app")


def test_submit_read_follow_and_cancel_a_job_over_http(
    make_host: MakeHost, call: Call, tmp_path: Path
) -> None:
    host = make_host()
    spec = {"kind": "train", "code": code_artifact(host, tmp_path), "entrypoint": "slow.py"}

    submitted = call(host, "POST", "/api/jobs", json.dumps(spec).encode())
    assert submitted.status == 201, submitted.body
    job_id = submitted.json()["id"]

    got = call(host, "GET", f"/api/jobs/{job_id}")
    assert got.status == 200
    assert got.json()["source"] == "http"

    def started() -> bool:
        answer = call(host, "GET", f"/api/jobs/{job_id}/logs?code={host.key}", key=None)
        assert answer.status == 200
        assert answer.headers["X-Job-State"] in ("PROVISIONING", "RUNNING")
        return "started" in answer.body.decode()

    wait_for(started, "the job's first line of output")

    cancelled = call(host, "POST", f"/api/jobs/{job_id}/cancel")
    assert cancelled.status == 200
    assert (cancelled.json()["state"], cancelled.json()["compute_state"]) == (
        "CANCELLED",
        "released",
    )
    listed = call(host, "GET", "/api/jobs?state=cancelled")
    assert [j["id"] for j in listed.json()] == [job_id]


def test_a_request_without_the_key_or_with_a_wrong_one_gets_401(
    make_host: MakeHost, call: Call
) -> None:
    host = make_host()
    answers = {
        "no key": call(host, "POST", "/api/jobs", b"{}", key=None),
        "a wrong key": call(host, "GET", "/api/jobs", key="not-the-key"),
        "a wrong key ": call(host, "GET", "/api/jobs?code=not-the-key", key=None),
    }
    for why, answer in answers.items():
        assert answer.status == 401
        assert answer.json()["error"].startswith(why.strip() + ": send the dev host's function key")
    assert host.invocations == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "request body is not JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"kind": "train", "code": "/etc", "entrypoint": "job.py"}', "artifact URI"),
    ],
)
def test_a_bad_body_gets_400_with_the_reason(
    make_host: MakeHost, call: Call, body: bytes, reason: str
) -> None:
    host = make_host()
    answer = call(host, "POST", "/api/jobs", body)
    assert answer.status == 400
    assert answer.headers["Content-Type"].startswith("application/json")
    assert reason in answer.json()["error"]
    assert host.service.store.list() == []


def test_an_unknown_job_gets_404(make_host: MakeHost, call: Call) -> None:
    host = make_host()
    for path in ("/api/jobs/train-000000000000", "/api/jobs/train-000000000000/logs"):
        answer = call(host, "GET", path)
        assert answer.status == 404
        assert "no job 'train-000000000000'" in answer.json()["error"]


def test_routes_methods_and_sizes_are_checked_before_any_function_runs(
    make_host: MakeHost, call: Call
) -> None:
    host = make_host()
    assert call(host, "GET", "/api/nothing-here").status == 404
    assert call(host, "GET", "/elsewhere").status == 404
    wrong_method = call(host, "DELETE", "/api/jobs")
    assert wrong_method.status == 405
    assert wrong_method.headers["Allow"] == "GET, POST"
    too_big = call(host, "POST", "/api/jobs", b"x" * (MAX_BODY + 1))
    assert too_big.status == 413
    assert host.invocations == []

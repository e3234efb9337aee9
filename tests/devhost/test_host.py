"""The dev host reads function_app.py as the Functions host does and wires every function."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import azure.functions as func
import pytest

from devhost.conftest import APP, MakeHost
from ephemerid.devhost.functions import ephemerid_app
from ephemerid.devhost.keys import KEY_ENV, KEYS_FILE
from ephemerid.errors import BadInput
from ephemerid.functions import handlers_from_settings, register


def registered_names() -> list[str]:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, handlers_from_settings)
    return [f.get_function_name() for f in app.get_functions()]


def test_every_function_of_function_app_py_is_wired_to_its_local_source(
    make_host: MakeHost,
) -> None:
    host = make_host()

    sources = {w.function: (w.trigger, w.source) for w in host.wiring}
    assert list(sources) == registered_names()
    assert sources == {
        "on_blob_created": ("blobTrigger", "bucket"),
        "on_run_result": ("blobTrigger", "bucket"),
        "on_job_message": ("serviceBusTrigger", "servicebus-stand-in"),
        "on_job_queue_message": ("queueTrigger", "folder-queue"),
        "tick": ("timerTrigger", "clock"),
        "submit_job": ("httpTrigger", "http"),
        "list_jobs": ("httpTrigger", "http"),
        "get_job": ("httpTrigger", "http"),
        "cancel_job": ("httpTrigger", "http"),
        "job_logs": ("httpTrigger", "http"),
        "list_rejected": ("httpTrigger", "http"),
        "serving_deploy": ("httpTrigger", "http"),
        "dashboard": ("httpTrigger", "http"),
    }
    details = {w.function: w.detail for w in host.wiring}
    bucket = host.service.artifacts.root_uri
    assert f"{bucket}/incoming/{{name}}" in details["on_blob_created"]
    assert f"{bucket}/runs/{{job}}/result.json" in details["on_run_result"]
    webhook = f"{host.url}/runtime/webhooks/blobs?functionName=Host.Functions.on_run_result"
    assert webhook in details["on_run_result"]
    assert str(host.home / "queues" / "jobs") in details["on_job_queue_message"]
    assert "not Service Bus" in details["on_job_message"]
    assert "'0 * * * * *'" in details["tick"]
    assert details["get_job"] == f"GET {host.url}/api/jobs/{{id}} (function key)"


def test_ephemerid_app_is_wired_like_the_repository_function_app(
    make_host: MakeHost, tmp_path: Path
) -> None:
    from_file = make_host(home=tmp_path / "a").wiring
    built = make_host(app=ephemerid_app(), home=tmp_path / "b").wiring
    assert [(w.function, w.trigger, w.source) for w in built] == [
        (w.function, w.trigger, w.source) for w in from_file
    ]


def test_the_same_app_object_can_be_hosted_twice(make_host: MakeHost, tmp_path: Path) -> None:
    app = ephemerid_app()
    first = make_host(app=app, home=tmp_path / "a")
    second = make_host(app=app, home=tmp_path / "b")
    assert len(first.wiring) == len(second.wiring) == len(registered_names())


def test_app_settings_name_their_values_and_fall_back_to_local_defaults(
    make_host: MakeHost,
) -> None:
    host = make_host(settings={"EPHEMERID_JOBS_QUEUE": "orders"})
    bindings = {f.name: f.binding for f in host.functions}
    assert bindings["on_job_queue_message"]["queueName"] == "orders"
    assert bindings["on_job_message"]["queueName"] == "orders"
    assert bindings["on_blob_created"]["path"] == "incoming/{name}"


def test_settings_are_set_while_the_host_runs_and_restored_after(
    make_host: MakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPHEMERID_GRACE_S", "7")
    host = make_host(settings={"EPHEMERID_GRACE_S": "2"})
    assert os.environ["EPHEMERID_HOME"] == str(tmp_path / "home")
    assert host.service.settings.grace_s == 2.0
    assert handlers_from_settings.cache_info().currsize == 1

    host.close()

    assert os.environ["EPHEMERID_GRACE_S"] == "7"
    assert "EPHEMERID_HOME" not in os.environ
    assert handlers_from_settings.cache_info().currsize == 0


def test_the_function_key_is_kept_for_this_user_only(make_host: MakeHost) -> None:
    host = make_host()
    keys = host.home / KEYS_FILE
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert json.loads(keys.read_text())["functionKeys"]["default"] == host.key
    assert len(host.key) >= 32


def test_the_function_key_comes_from_the_environment_when_set(
    make_host: MakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "dev-key-from-env")
    assert make_host().key == "dev-key-from-env"


def test_a_folder_without_function_app_py_is_refused(make_host: MakeHost, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no function app"):
        make_host(app=tmp_path)
    assert "EPHEMERID_HOME" not in os.environ


def test_a_function_app_py_in_a_folder_is_found(make_host: MakeHost) -> None:
    assert len(make_host(app=APP.parent).wiring) == len(registered_names())

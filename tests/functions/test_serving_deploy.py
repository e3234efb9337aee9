"""``POST /api/serving/deploy``, invoked as the Functions host invokes it, moving the prediction
service's Container App in the ARM simulator through the real azure-mgmt-appcontainers client."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from ephemerid.artifacts import put_bytes
from ephemerid.azure.container_app import ContainerAppDeployer, ContainerAppSettings
from ephemerid.functions import register
from ephemerid.functions.handlers import Handlers
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.testing.arm import ArmSimulator

GROUP, APP = "rg-serve", "ca-serve-fn"
MASTER, KEY = "master-key-for-the-test", "function-key-for-the-test"


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator() as sim:
        yield sim


@pytest.fixture
def deploy(sim: ArmSimulator, service: Service, tmp_path: Path) -> Callable[..., Any]:
    """The registered serving_deploy function over this test's service, its models and app."""
    for job in ("a", "b", "c", "d"):
        put_bytes(service.artifacts, f"runs/{job}/outputs/model/w.bin", job.encode())
        service.models.register("tabular", f"runs/{job}/outputs/model", job_id=job, metrics={})
    service.models.promote("tabular", 3, "production")
    app_id = sim.apps.add_app(GROUP, APP, "cr.azurecr.io/serving:1", {})
    settings = ContainerAppSettings(app_id=app_id, arm_endpoint=sim.endpoint)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"masterKey": MASTER, "functionKeys": {"app": KEY}}))
    handlers = Handlers(
        service,
        Rules.parse("rules: []\n", base=tmp_path),
        keys_file=str(keys),
        serving=functools.partial(ContainerAppDeployer.from_settings, settings),
    )
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, lambda: handlers)
    [function] = [f for f in app.get_functions() if f.get_function_name() == "serving_deploy"]
    return function.get_user_function()


def post(body: dict[str, Any] | bytes, key: str = MASTER) -> func.HttpRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"x-functions-key": key}
    return func.HttpRequest(
        "POST", "http://localhost/api/serving/deploy", body=raw, headers=headers
    )


def test_a_promotion_redeploys_the_service_to_the_new_version(
    deploy: Callable[..., Any], sim: ArmSimulator, service: Service
) -> None:
    first = deploy(post({"model": "tabular@production"}))
    assert first.status_code == 200, first.get_body()
    assert sim.apps.active(GROUP, APP) == {f"{APP}--v3": 100}

    canary = deploy(post({"model": "tabular", "split": "tabular@production=90,tabular:4=10"}))
    assert json.loads(canary.get_body())["traffic"] == {f"{APP}--v3": 90, f"{APP}--v4": 10}

    service.models.promote("tabular", 4, "production")
    promoted = json.loads(deploy(post({"model": "tabular@production"})).get_body())

    assert sim.apps.active(GROUP, APP) == {f"{APP}--v4": 100}
    assert promoted["deactivated"] == [f"{APP}--v3"] and promoted["changed"]
    again = json.loads(deploy(post({"model": "tabular@production"})).get_body())
    assert not again["changed"]


@pytest.mark.parametrize(
    ("req", "status", "says"),
    [
        (post({"model": "tabular@production"}, key=KEY), 403, "admin (master) key"),
        (post({"model": "tabular:9"}), 404, "has no version 9"),
        (post({"model": "tabular@canary"}), 404, "has no alias 'canary'"),
        (post({"model": "tabular", "split": "tabular:3=50"}), 400, "sum to 50, not 100"),
        (post(b"{nope"), 400, "the deploy request is not valid"),
        (post({"model": "tabular@production", "colour": "blue"}), 400, "colour"),
    ],
)
def test_a_refused_deploy_says_why_and_calls_no_arm(
    deploy: Callable[..., Any], sim: ArmSimulator, req: Any, status: int, says: str
) -> None:
    response = deploy(req)

    assert response.status_code == status
    assert says in json.loads(response.get_body())["error"]
    assert sim.requests == []


def test_a_deploy_that_arm_refuses_is_a_502_with_arms_reason(
    deploy: Callable[..., Any], sim: ArmSimulator
) -> None:
    sim.apps.refuse_next_patch("InvalidContainerAppTemplate", "simulated: the template is bad")

    response = deploy(post({"model": "tabular@production"}))

    assert response.status_code == 502
    error = json.loads(response.get_body())["error"]
    assert "Azure refused the deploy" in error and "InvalidContainerAppTemplate" in error


def test_without_a_serving_app_the_route_says_what_to_set(service: Service, tmp_path: Path) -> None:
    handlers = Handlers(service, Rules.parse("rules: []\n", base=tmp_path))
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, lambda: handlers)
    put_bytes(service.artifacts, "runs/a/outputs/model/w.bin", b"a")
    service.models.register("tabular", "runs/a/outputs/model", job_id="a", metrics={})
    [function] = [f for f in app.get_functions() if f.get_function_name() == "serving_deploy"]

    response = function.get_user_function()(post({"model": "tabular:1"}, key=""))  # as this process

    assert response.status_code == 400
    assert "EPHEMERID_SERVING_APP_ID" in json.loads(response.get_body())["error"]


def test_the_route_takes_the_master_key_only() -> None:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    register(app, lambda: pytest.fail("no event, no handlers"))
    [function] = [f for f in app.get_functions() if f.get_function_name() == "serving_deploy"]
    trigger = function.get_trigger().get_dict_repr()

    assert (trigger["route"], trigger["authLevel"].value) == ("serving/deploy", "admin")

"""Blue/green on the prediction service's Container App, through the real azure-mgmt-appcontainers
client against the ARM simulator (ephemerid.testing.arm_containerapps): one revision per version,
weights by revision, the old revision deactivated, idempotent, errors named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemerid.artifacts import open_artifacts, put_bytes
from ephemerid.azure.container_app import AppId, ContainerAppDeployer, ContainerAppSettings
from ephemerid.azure.split_plan import DeployRequest, SplitPlan, parse_split, plan_for
from ephemerid.errors import BadInput, Conflict, NotFound, Unavailable
from ephemerid.models import ModelRegistry
from ephemerid.testing.arm import ArmSimulator
from ephemerid.testing.arm_vms import SUBSCRIPTION

GROUP, APP = "rg-serve", "ca-serve-test"
IMAGE = "crtest.azurecr.io/serving:1"
WRITES = ("PATCH", "PUT", "POST", "DELETE")


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator() as sim:
        yield sim


@pytest.fixture
def app_id(sim: ArmSimulator) -> AppId:
    env = {"EPHEMERID_SERVING_MODEL": "tabular@production", "EPHEMERID_SERVING_PIN": "false"}
    return AppId.parse(sim.apps.add_app(GROUP, APP, IMAGE, env))


@pytest.fixture
def deployer(sim: ArmSimulator, app_id: AppId) -> ContainerAppDeployer:
    settings = ContainerAppSettings(app_id=str(app_id), arm_endpoint=sim.endpoint)
    return ContainerAppDeployer.from_settings(settings)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """``tabular`` versions 1 to 4, ``production`` on 3."""
    registry = ModelRegistry(open_artifacts(f"file://{tmp_path / 'bucket'}"))
    for job in ("a", "b", "c", "d"):
        put_bytes(registry.artifacts, f"runs/{job}/outputs/model/w.bin", job.encode())
        registry.register("tabular", f"runs/{job}/outputs/model", job_id=job, metrics={})
    registry.promote("tabular", 3, "production")
    return registry


def plan(registry: ModelRegistry, split: str) -> SplitPlan:
    return plan_for(registry, "tabular", parse_split(split))


def writes(sim: ArmSimulator) -> list[str]:
    return [f"{r.method} {r.path.rsplit('/', 2)[-2:]}" for r in sim.requests if r.method in WRITES]


def env_of(sim: ArmSimulator, revision: str) -> dict[str, str]:
    template = sim.apps.app(GROUP, APP).revisions[revision].template
    [container] = template["containers"]
    return {e["name"]: e.get("value", f"secret:{e.get('secretRef')}") for e in container["env"]}


def test_v3_then_a_canary_of_v4_then_v4_alone_with_the_old_revision_deactivated(
    sim: ArmSimulator, deployer: ContainerAppDeployer, registry: ModelRegistry
) -> None:
    first = deployer.deploy(plan(registry, "tabular@production=100"))

    assert sim.apps.active(GROUP, APP) == {f"{APP}--v3": 100}
    assert first.created == (f"{APP}--v3",) and first.deactivated == (f"{APP}--initial",)
    env = env_of(sim, f"{APP}--v3")
    assert env["EPHEMERID_SERVING_MODEL"] == "tabular:3" and env["EPHEMERID_SERVING_PIN"] == "true"
    assert env["EPHEMERID_SERVING_KEYS"] == "secret:serving-keys"  # the secret stays a reference

    canary = deployer.deploy(plan(registry, "tabular:3=90,tabular:4=10"))

    assert sim.apps.active(GROUP, APP) == {f"{APP}--v3": 90, f"{APP}--v4": 10}
    assert canary.created == (f"{APP}--v4",) and canary.deactivated == ()

    registry.promote("tabular", 4, "production")
    promoted = deployer.deploy(plan(registry, "tabular@production=100"))

    assert sim.apps.active(GROUP, APP) == {f"{APP}--v4": 100}
    assert promoted.created == () and promoted.deactivated == (f"{APP}--v3",)
    assert not sim.apps.app(GROUP, APP).revisions[f"{APP}--v3"].active  # kept, inactive


def test_a_new_revision_gets_no_traffic_before_the_weights_are_set(
    sim: ArmSimulator, deployer: ContainerAppDeployer, registry: ModelRegistry
) -> None:
    """The Bicep's traffic follows the latest revision: the first new revision's PATCH pins it."""
    deployer.deploy(plan(registry, "tabular:3=100"))

    history = sim.apps.app(GROUP, APP).history
    assert history == [{f"{APP}--initial": 100}, {f"{APP}--v3": 100}]


def test_deploying_the_same_plan_again_writes_nothing(
    sim: ArmSimulator, deployer: ContainerAppDeployer, registry: ModelRegistry
) -> None:
    deployer.deploy(plan(registry, "tabular:3=90,tabular:4=10"))
    before = len(writes(sim))

    again = deployer.deploy(plan(registry, "tabular:3=90,tabular:4=10"))

    assert not again.changed
    assert writes(sim)[before:] == []
    assert again.traffic == {f"{APP}--v3": 90, f"{APP}--v4": 10}


def test_going_back_to_a_deactivated_version_activates_its_revision(
    sim: ArmSimulator, deployer: ContainerAppDeployer, registry: ModelRegistry
) -> None:
    deployer.deploy(plan(registry, "tabular:3=100"))
    deployer.deploy(plan(registry, "tabular:4=100"))

    back = deployer.deploy(plan(registry, "tabular:3=100"))

    assert back.activated == (f"{APP}--v3",) and back.created == ()
    assert sim.apps.active(GROUP, APP) == {f"{APP}--v3": 100}


@pytest.mark.parametrize(
    ("split", "error", "says"),
    [
        ("tabular:9=100", NotFound, "has no version 9 (versions: 1, 2, 3, 4)"),
        ("tabular@canary=100", NotFound, "has no alias 'canary'"),
        ("tabular:3=60,tabular:4=30", BadInput, "sum to 90, not 100"),
        ("tabular:3=50,tabular@production=50", BadInput, "version 3 of 'tabular' is named twice"),
        ("churn:1=100", BadInput, "one prediction service serves one model"),
        ("tabular:3", BadInput, "has no weight: write ref=weight"),
        ("tabular:3=50.5,tabular:4=49.5", BadInput, "whole-number weights"),
    ],
)
def test_a_plan_that_names_what_does_not_exist_is_refused_before_any_arm_call(
    sim: ArmSimulator, registry: ModelRegistry, split: str, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=says.replace("(", r"\(").replace(")", r"\)")):
        plan(registry, split)

    assert sim.requests == []


def test_throttling_and_server_errors_are_retried_by_the_client(
    sim: ArmSimulator, deployer: ContainerAppDeployer, registry: ModelRegistry
) -> None:
    sim.fail_next("throttle", method="PATCH", retry_after="0")
    sim.fail_next("error", method="GET")
    sim.fail_next("error", method="POST")

    deployer.deploy(plan(registry, "tabular:3=100"))

    assert sim.apps.active(GROUP, APP) == {f"{APP}--v3": 100}
    assert {"PATCH", "GET", "POST"} <= {r.method for r in sim.requests}


def test_a_server_that_keeps_failing_is_unavailable_naming_the_app(
    sim: ArmSimulator, app_id: AppId, registry: ModelRegistry
) -> None:
    settings = ContainerAppSettings(app_id=str(app_id), arm_endpoint=sim.endpoint)
    deployer = ContainerAppDeployer.from_settings(settings, retry_total=1)
    sim.fail_next("error", method="GET", count=5)

    with pytest.raises(Unavailable, match=f"reading container app {app_id}"):
        deployer.deploy(plan(registry, "tabular:3=100"))


def test_a_container_app_that_does_not_exist_is_a_clear_error_naming_it(
    sim: ArmSimulator, registry: ModelRegistry
) -> None:
    missing = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{GROUP}/providers/Microsoft.App"
    missing += "/containerApps/ca-gone"
    settings = ContainerAppSettings(app_id=missing, arm_endpoint=sim.endpoint)

    with pytest.raises(NotFound, match=r"container app 'ca-gone' .* does not exist: deploy"):
        ContainerAppDeployer.from_settings(settings).deploy(plan(registry, "tabular:3=100"))

    assert writes(sim) == []


def test_a_version_asked_for_from_another_image_is_a_conflict_before_any_write(
    sim: ArmSimulator, deployer: ContainerAppDeployer, registry: ModelRegistry
) -> None:
    deployer.deploy(plan(registry, "tabular:3=100"), image="crtest.azurecr.io/serving:2")
    before = len(writes(sim))

    with pytest.raises(Conflict, match="keeps its image"):
        deployer.deploy(plan(registry, "tabular:4=50,tabular:3=50"), image="crtest/serving:3")

    assert writes(sim)[before:] == []  # not even version 4's revision


@pytest.mark.parametrize(
    "app_id",
    ["", "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/x"],
)
def test_no_or_a_wrong_app_id_is_bad_input_saying_what_to_set(app_id: str) -> None:
    with pytest.raises(BadInput, match="EPHEMERID_SERVING_APP_ID"):
        ContainerAppDeployer.from_settings(ContainerAppSettings(app_id=app_id))


def test_the_deploy_request_takes_a_ref_or_a_split_and_refuses_anything_else() -> None:
    assert DeployRequest.parse(b'{"model": "tabular@production"}').entries()[0] == "tabular"
    name, entries = DeployRequest.parse(
        b'{"model": "tabular", "split": "tabular:3=90,tabular:4=10"}'
    ).entries()
    assert name == "tabular" and [w for _, w in entries] == [90, 10]
    for body in (b"", b"[1]", b'{"model": "tabular", "colour": "blue"}', b"{not json"):
        with pytest.raises(BadInput, match="the deploy request is not valid"):
            DeployRequest.parse(body)

"""A job that promotes a model under the alias the prediction service follows redeploys it: real
train jobs on the local backend, the real azure-mgmt-appcontainers client, the ARM simulator."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from drive import run, spec_for, write_script
from ephemerid.azure.container_app import ContainerAppDeployer, ContainerAppSettings
from ephemerid.azure.follow import AliasFollower
from ephemerid.errors import BadInput
from ephemerid.service import Service
from ephemerid.spec import ModelRef
from ephemerid.testing.arm import ArmSimulator

GROUP, APP = "rg-serve", "ca-serve-follow"
MODEL_SCRIPT = """
import os, pathlib
model = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "model"
model.mkdir()
(model / "weights.txt").write_text("0.1 0.2 0.3")
"""


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator() as sim:
        yield sim


@pytest.fixture
def follower(sim: ArmSimulator, service: Service) -> AliasFollower:
    app_id = sim.apps.add_app(GROUP, APP, "cr.azurecr.io/serving:1", {})
    env = {
        "EPHEMERID_SERVING_APP_ID": app_id,
        "EPHEMERID_SERVING_FOLLOW": "tabular@production",
        "EPHEMERID_ARM_ENDPOINT": sim.endpoint,
    }
    settings = ContainerAppSettings.from_env(env)
    followed = settings.followed()
    assert followed is not None
    deployer = functools.partial(ContainerAppDeployer.from_settings, settings)
    follower = AliasFollower(service.models, followed, deployer)
    service.subscribe(follower)
    return follower


def test_each_promoting_job_moves_the_service_to_its_version(
    follower: AliasFollower, sim: ArmSimulator, service: Service, code_dir: Path
) -> None:
    write_script(code_dir, MODEL_SCRIPT)
    promoting = {"name": "tabular", "alias": "production"}

    first = run(service, spec_for(code_dir, register_as=promoting))
    assert first.model_version == "tabular:1"
    assert sim.apps.active(GROUP, APP) == {f"{APP}--v1": 100}

    run(service, spec_for(code_dir, register_as={"name": "tabular", "alias": "staging"}))
    assert sim.apps.active(GROUP, APP) == {f"{APP}--v1": 100}  # another alias: not followed

    run(service, spec_for(code_dir, register_as=promoting))
    assert sim.apps.active(GROUP, APP) == {f"{APP}--v3": 100}
    assert not sim.apps.app(GROUP, APP).revisions[f"{APP}--v1"].active


def test_a_follower_that_cannot_deploy_never_fails_the_job(
    sim: ArmSimulator, service: Service, code_dir: Path
) -> None:
    missing = f"{sim.apps.add_app(GROUP, APP, 'cr/serving:1', {})}-gone"
    settings = ContainerAppSettings(app_id=missing, arm_endpoint=sim.endpoint)
    deployer = functools.partial(ContainerAppDeployer.from_settings, settings)
    service.subscribe(AliasFollower(service.models, ModelRef.parse("tabular@production"), deployer))
    write_script(code_dir, MODEL_SCRIPT)

    job = run(service, spec_for(code_dir, register_as={"name": "tabular", "alias": "production"}))

    assert job.model_version == "tabular:1"
    assert job.state.value == "SUCCEEDED"
    assert sim.apps.active(GROUP, APP) == {f"{APP}--initial": 100}


def test_following_a_version_instead_of_an_alias_is_refused_naming_the_setting() -> None:
    with pytest.raises(BadInput, match="EPHEMERID_SERVING_FOLLOW"):
        ContainerAppSettings.from_env({"EPHEMERID_SERVING_FOLLOW": "tabular:3"})

"""The VM body azure-vm sends, checked against azure-mgmt-compute's own ``VirtualMachine`` model.

The body is a raw dict, and the SDK's models keep keys they do not know, so a typo would reach
Azure unnoticed: ``body_problems`` (ephemerid.testing.vm_model) walks the model's REST fields
instead, and the ARM simulator refuses any PUT it finds a problem in.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from compute.vms import azure_env
from ephemerid.compute.vm_body import Deadline, Placement, VmBody
from ephemerid.record import utcnow
from ephemerid.settings import Settings
from ephemerid.testing.arm import ArmSimulator, compute_client
from ephemerid.testing.vm_model import body_problems

T4 = "Standard_NC4as_T4_v3"
PLACEMENTS = [Placement(T4, "eastus", "", False), Placement(T4, "eastus", "2", True)]


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator() as simulator:
        yield simulator


def rendered(sim: ArmSimulator, tmp_path: Path, placement: Placement) -> dict[str, Any]:
    config = Settings.from_env(azure_env(tmp_path, sim)).azure_vm
    assert config is not None
    at = utcnow() + timedelta(hours=1)
    deadline = Deadline(at, at - timedelta(minutes=5), {"EPHEMERID_ARM_ENDPOINT": sim.endpoint})
    env = {"EPHEMERID_ARTIFACTS": "file:///bucket", "EPHEMERID_JOB": "train-0123456789ab"}
    body = VmBody(config, "ephemerid[azure]==0.1.0", "ssh-rsa AAAAB3Nza test")
    return body.render("train-0123456789ab", "eph-train-0123456789ab-0", placement, env, deadline)


@pytest.mark.parametrize("placement", PLACEMENTS, ids=str)
def test_every_key_of_the_vm_body_is_one_the_sdks_virtual_machine_model_knows(
    sim: ArmSimulator, tmp_path: Path, placement: Placement
) -> None:
    body = rendered(sim, tmp_path, placement)

    assert body_problems(body) == []
    assert ("zones" in body) is bool(placement.zone)
    assert ("evictionPolicy" in body["properties"]) is placement.spot


MISTAKES = {
    "a misspelled key": (
        ("properties", "networkProfile", "networkInterfaceConfigurations", 0, "properties"),
        "deleteOption",
        "deleteOptoin",
        "properties.networkProfile.networkInterfaceConfigurations[0].properties.deleteOptoin: "
        "not a field of VirtualMachineNetworkInterfaceConfigurationProperties "
        "(did you mean 'deleteOption'?)",
    ),
    "a key in the wrong place": (
        ("properties",),
        "priority",
        "spotPriority",
        "properties.spotPriority: not a field of VirtualMachineProperties",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistaken_key_in_the_vm_body_is_named_with_its_path(
    sim: ArmSimulator, tmp_path: Path, mistake: str
) -> None:
    where, right, wrong, expected = MISTAKES[mistake]
    body = copy.deepcopy(rendered(sim, tmp_path, PLACEMENTS[1]))
    parent: Any = body
    for step in where:
        parent = parent[step]
    parent[wrong] = parent.pop(right)

    assert [p for p in body_problems(body) if p.startswith(expected)] != [], body_problems(body)


def test_a_value_outside_an_enum_and_a_read_only_key_are_problems_too(
    sim: ArmSimulator, tmp_path: Path
) -> None:
    body = copy.deepcopy(rendered(sim, tmp_path, PLACEMENTS[1]))
    body["properties"]["priority"] = "Sopt"
    body["properties"]["provisioningState"] = "Succeeded"

    assert body_problems(body) == [
        "properties.priority: 'Sopt' is not one of Regular, Low, Spot, SpotPlus",
        "properties.provisioningState: read-only in VirtualMachineProperties; ARM sets it",
    ]


def test_the_simulator_refuses_a_put_whose_body_has_a_key_the_model_does_not_know(
    sim: ArmSimulator, tmp_path: Path
) -> None:
    body = copy.deepcopy(rendered(sim, tmp_path, PLACEMENTS[0]))
    body["properties"]["hardwareProfil"] = body["properties"].pop("hardwareProfile")
    body["properties"]["hardwareProfile"] = {"vmSize": T4}  # what the simulator needs to place it
    client = compute_client(sim.endpoint)

    with pytest.raises(HttpResponseError) as refused:
        client.virtual_machines.begin_create_or_update("eph-jobs", "typo", body).result()

    assert refused.value.status_code == 400
    assert "InvalidRequestContent" in str(refused.value)
    assert "properties.hardwareProfil: not a field of VirtualMachineProperties" in str(
        refused.value
    )
    assert sim.inventory() == []

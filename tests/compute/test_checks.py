"""What a backend cannot run is refused at submit: 400 over HTTP, nothing stored, nothing rented.

Each backend's ``check(spec)`` runs before the job is accepted, so a caller never gets 201 and
then a FAILED job for something ephemerid knew it could not do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from compute.aml import aml_env
from compute.cloud import ephemerid
from compute.vms import azure_env
from drive import write_script
from ephemerid.artifacts import upload_dir
from ephemerid.functions.handlers import Handlers
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.testing.arm import ArmSimulator


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(provision_s=0.05, delete_s=0.05, aml_queue_s=0.05) as simulator:
        yield simulator


def http_submit(service: Service, code_dir: Path, compute: dict[str, Any]) -> func.HttpResponse:
    write_script(code_dir, "print('never runs')\n")
    upload_dir(service.artifacts, code_dir, "code/app")
    body = {"kind": "train", "code": service.uri("code/app"), "entrypoint": "job.py"}
    request = func.HttpRequest(
        "POST",
        "http://localhost/api/jobs",
        body=json.dumps({**body, "compute": compute}).encode(),
    )
    return Handlers(service, Rules.parse("rules: []", base=code_dir.parent)).http_submit(request)


def writes(sim: ArmSimulator) -> list[str]:
    return [r.path for r in sim.requests if r.method in ("PUT", "POST", "PATCH")]


CASES = {
    "two nodes on local compute": ("local", {"nodes": 2}, "compute.nodes: 2 nodes need"),
    "two nodes on one VM": ("azure-vm", {"nodes": 2}, "'azure-vm' runs each job on one machine"),
    "a sku that is no VM size": (
        "azure-vm",
        {"skus": ["nc4as-t4"]},
        "compute.skus: 'nc4as-t4' is not an Azure VM size name",
    ),
    "a sku the cluster does not run": (
        "azure-ml",
        {"skus": ["Standard_NC24ads_A100_v4"]},
        "runs Standard_NC4as_T4_v3 nodes only",
    ),
    "spot only on a dedicated cluster": (
        "azure-ml",
        {"spot": "only"},
        "compute.spot: only: cluster 'gpu' has dedicated nodes",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_what_a_backend_cannot_run_is_a_400_with_nothing_stored_or_rented(
    sim: ArmSimulator, tmp_path: Path, code_dir: Path, case: str
) -> None:
    backend, compute, message = CASES[case]
    env = (aml_env if backend == "azure-ml" else azure_env)(tmp_path / "home", sim)
    with ephemerid(env) as service:
        answer = http_submit(service, code_dir, {"backend": backend, **compute})

        assert answer.status_code == 400
        assert message in json.loads(answer.get_body())["error"]
        assert service.list() == []
        assert writes(sim) == []
        assert service.held_compute() == 0


def test_a_vm_size_written_as_azure_names_it_is_accepted(
    sim: ArmSimulator, tmp_path: Path, code_dir: Path
) -> None:
    with ephemerid(azure_env(tmp_path / "home", sim)) as service:
        answer = http_submit(service, code_dir, {"skus": ["Standard_NV6ads_A10_v5"]})

        assert answer.status_code == 201
        [job] = service.list()
        assert job.spec.compute.skus == ["Standard_NV6ads_A10_v5"]
        service.cancel(job.id)

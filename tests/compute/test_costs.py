"""What a job on the Azure backends costs, read back by the cost report: a VM priced from the
table while the ARM simulator plays it, an Azure ML job with its cluster's billed idle tail, and
max_cost refused at submit with the SKU's own price."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from compute.aml import AmlPlayer, aml_env
from compute.cloud import ephemerid, settle
from compute.vms import VmPlayer, azure_env
from drive import spec_for, write_script
from ephemerid.compute.prices import PriceTable
from ephemerid.costs import report
from ephemerid.errors import SpecError
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service
from ephemerid.testing.arm import ArmSimulator

T4 = "Standard_NC4as_T4_v3"
PRICES = PriceTable.load()


@pytest.fixture
def sim() -> Iterator[ArmSimulator]:
    with ArmSimulator(provision_s=0.05, delete_s=0.05, aml_queue_s=0.05, aml_cancel_s=0.05) as s:
        yield s


def whole(service: Service, done: JobRecord) -> dict[str, float]:
    assert done.compute_requested_at is not None and done.released_at is not None
    found = report(
        service.list(),
        since=done.compute_requested_at - timedelta(hours=1),
        until=done.released_at + timedelta(hours=1),
        prices=PRICES,
    )
    return found.total.to_json()


def test_a_vm_job_costs_its_held_time_at_the_tables_price_for_its_sku(
    sim: ArmSimulator, tmp_path: Path, code_dir: Path
) -> None:
    write_script(code_dir, "print('trained on a VM')\n")
    with (
        ephemerid(azure_env(tmp_path / "home", sim)) as service,
        VmPlayer(sim, tmp_path / "vms"),
    ):
        job = service.submit(spec_for(code_dir, compute={"skus": [T4], "gpus": 1})).job
        [done] = settle(service, [job.id])
        total = whole(service, done)

    assert done.state is JobState.SUCCEEDED and done.price_per_hour == 0.526
    assert done.held_s is not None and done.runtime_s is not None
    assert total["cost_usd"] == pytest.approx(done.held_s / 3600 * 0.526, abs=1e-6)
    assert total["held_h"] == pytest.approx(done.held_s / 3600, abs=1e-6)
    assert total["run_h"] == pytest.approx(done.runtime_s / 3600, abs=1e-6)
    assert total["gpu_h"] == pytest.approx(total["held_h"], abs=1e-6)  # one GPU
    assert total["unpriced_h"] == 0


def test_an_azure_ml_jobs_billed_idle_tail_is_its_idle_in_the_report(
    sim: ArmSimulator, tmp_path: Path, code_dir: Path
) -> None:
    write_script(code_dir, "print('trained on Azure ML')\n")
    with (
        ephemerid(aml_env(tmp_path / "home", sim)) as service,
        AmlPlayer(sim, tmp_path / "nodes"),
    ):
        job = service.submit(spec_for(code_dir, compute={"gpus": 1})).job
        [done] = settle(service, [job.id])
        total = whole(service, done)

    assert done.state is JobState.SUCCEEDED and done.billed_tail_s == 120.0
    assert done.held_s is not None
    assert total["cost_usd"] == pytest.approx(done.held_s / 3600 * 0.526, abs=1e-6)
    assert total["idle_h"] * 3600 >= 120.0  # the cluster's nodes idle before they scale down


def test_max_cost_is_checked_against_the_vm_skus_own_price_at_submit(
    sim: ArmSimulator, tmp_path: Path, code_dir: Path
) -> None:
    write_script(code_dir, "print('never runs')\n")
    spec = spec_for(code_dir, compute={"skus": [T4], "max_runtime": "10h", "max_cost": 1})
    with ephemerid(azure_env(tmp_path / "home", sim)) as service:
        with pytest.raises(SpecError) as refused:
            service.submit(spec)
        assert service.list() == []

    said = str(refused.value)
    assert f"{T4} on demand at $0.526/h" in said and "could cost $5.3038" in said
    assert [r for r in sim.requests if r.method == "PUT"] == []  # nothing rented

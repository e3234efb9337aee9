"""A prediction service roll-out on Azure, counted: the ARM calls each step of blue/green makes.

The real ``azure-mgmt-appcontainers`` client drives ``ContainerAppDeployer`` against the ARM
simulator's Container Apps (``ephemerid.testing.arm_containerapps``), each PATCH a long-running
operation of ``--update-s`` seconds (on Azure one takes tens of seconds to minutes: the count of
PATCHes, not the simulator's time, is what carries over). The steps: the first deploy of
``tabular@production`` (v3) over the Bicep's revision, a canary (v3=90, v4=10), the promotion
(v4 alone, v3 deactivated), and the same plan again (nothing to do). Reported per step: reads
(GET), long-running writes (PATCH), revision activations (POST), polls of the operations, and
the wall time against the simulator.

    python bench/serving_rollout.py
    python bench/serving_rollout.py --update-s 0.5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from ephemerid.artifacts import open_artifacts, put_bytes
from ephemerid.azure.container_app import AppId, ContainerAppDeployer, ContainerAppSettings
from ephemerid.azure.split_plan import parse_split, plan_for
from ephemerid.models import ModelRegistry
from ephemerid.testing.arm import ArmSimulator

STEPS = [
    ("first deploy (v3)", "tabular@production=100", None),
    ("canary (v3=90, v4=10)", "tabular@production=90,tabular:4=10", None),
    ("promote (v4 alone)", "tabular@production=100", 4),
    ("same plan again", "tabular@production=100", None),
]


def counts(sim: ArmSimulator, since: int) -> dict[str, int]:
    found = {"GET": 0, "PATCH": 0, "POST": 0, "polls": 0}
    for request in sim.requests[since:]:
        if "containerappOperationStatuses" in request.path:
            found["polls"] += 1
        else:
            found[request.method] = found.get(request.method, 0) + 1
    return found


def run(update_s: float, folder: Path) -> list[dict[str, Any]]:
    registry = ModelRegistry(open_artifacts(f"file://{folder / 'bucket'}"))
    for job in ("a", "b", "c", "d"):
        put_bytes(registry.artifacts, f"runs/{job}/outputs/model/w.bin", job.encode())
        registry.register("tabular", f"runs/{job}/outputs/model", job_id=job, metrics={})
    registry.promote("tabular", 3, "production")
    rows = []
    with ArmSimulator() as sim:
        sim.apps.update_s = update_s
        app_id = AppId.parse(sim.apps.add_app("rg-bench", "ca-serve-bench", "cr/serving:1", {}))
        settings = ContainerAppSettings(app_id=str(app_id), arm_endpoint=sim.endpoint)
        deployer = ContainerAppDeployer.from_settings(settings)
        for label, split, promote in STEPS:
            if promote:
                registry.promote("tabular", promote, "production")
            since, started = len(sim.requests), time.perf_counter()
            deployed = deployer.deploy(plan_for(registry, "tabular", parse_split(split)))
            wall = time.perf_counter() - started
            rows.append(
                {
                    "step": label,
                    **counts(sim, since),
                    "wall_s": round(wall, 3),
                    "traffic": deployed.traffic,
                    "changed": deployed.changed,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update-s", type=float, default=0.05, help="each PATCH's duration")
    args = parser.parse_args()
    bench = common.Run("serving_rollout", {"update_s": args.update_s})
    with tempfile.TemporaryDirectory() as folder:
        rows = run(args.update_s, Path(folder))
    common.table(
        "Roll-out steps (ARM simulator)",
        ["step", "GET", "PATCH", "POST", "polls", "wall s", "traffic"],
        [
            [r["step"], r["GET"], r["PATCH"], r["POST"], r["polls"], r["wall_s"], r["traffic"]]
            for r in rows
        ],
    )
    bench.save({"steps": rows})


if __name__ == "__main__":
    main()

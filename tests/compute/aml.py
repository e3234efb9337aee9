"""The cluster's part in tests of the azure-ml backend, and settings that point it at the simulator.

The simulator's Azure ML jobs run nothing. When one turns ``Running``, ``AmlPlayer`` does what
the cluster's nodes would: for each of its ``instanceCount`` nodes and each of that node's
``processCountPerInstance`` processes, it runs the job's own command (as the PUT sent it) with
``bash -c`` in a folder of that node, the job's ``environmentVariables`` set and, for a
distributed job, the variables Azure ML's PyTorch distribution sets (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). ``python`` is this
interpreter, as it is the environment image's on Azure. When every process has ended, it reports
``Completed`` (all exited 0) or ``Failed``; a cancelled job's processes are killed. What is not
played: the image, the identity (the bucket is a local folder), the GPUs and the network between
nodes (every rank is on 127.0.0.1).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from drive import kill_session
from ephemerid.compute.aml_environment import RunnerEnvironment
from ephemerid.testing.aml import TERMINAL, Cluster, SimJob
from ephemerid.testing.arm import SUBSCRIPTION, ArmSimulator

GROUP = "eph-ml"
WORKSPACE = "mlw-test"
CLUSTER = "gpu"
ENVIRONMENT = "azureml:ephemerid-runner:1"  # as an earlier deploy registered it


def aml_env(home: Path, sim: ArmSimulator, **more: str) -> dict[str, str]:
    """EPHEMERID_* settings for an ephemerid whose azure-ml backend submits to ``sim``; it
    registers its own runner environment (no EPHEMERID_AML_ENVIRONMENT)."""
    if not sim.ml.has_workspace(GROUP, WORKSPACE):
        sim.ml.workspace(GROUP, WORKSPACE, Cluster(CLUSTER, max_nodes=4))
    return {
        "EPHEMERID_HOME": str(home),
        "EPHEMERID_BACKEND": "azure-ml",
        "EPHEMERID_AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
        "EPHEMERID_AML_RESOURCE_GROUP": GROUP,
        "EPHEMERID_AML_WORKSPACE": WORKSPACE,
        "EPHEMERID_AML_CLUSTER": CLUSTER,
        "EPHEMERID_ARM_ENDPOINT": sim.endpoint,
        "EPHEMERID_ARM_RETRY_S": "0.01",
        "EPHEMERID_HEARTBEAT_S": "0.5",
        "EPHEMERID_GRACE_S": "2",
        "EPHEMERID_PROVISION_TIMEOUT_S": "20",
        "EPHEMERID_AML_FINISH_WAIT_S": "10",
        "EPHEMERID_AML_CANCEL_WAIT_S": "1",
        **more,
    }


def register(sim: ArmSimulator, runner: RunnerEnvironment, version: str = "") -> None:
    """``runner`` registered in the test workspace as an earlier provision (or deploy) did."""
    props = {"image": runner.image, "condaFile": yaml.safe_dump(runner.conda), "osType": "Linux"}
    environments = sim.ml.environments(GROUP, WORKSPACE)
    environments.register(runner.name, version or runner.version, **props)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class AmlPlayer:
    """Plays the nodes of every job the simulator reports running; kills them when cancelled."""

    def __init__(self, sim: ArmSimulator, root: Path) -> None:
        self.sim, self.root = sim, root
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> AmlPlayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for procs in self.procs.values():
            for proc in procs:
                kill_session(proc)

    def played(self) -> list[str]:
        return list(self.procs)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            for job in self.sim.ml.jobs():
                if job.status == "Running" and job.name not in self.procs:
                    self.procs[job.name] = self._start(job)
                procs = self.procs.get(job.name, [])
                if job.status in ("CancelRequested", *TERMINAL):
                    for proc in procs:
                        kill_session(proc)
                elif procs and all(p.poll() is not None for p in procs):
                    codes = [p.returncode for p in procs]
                    ok = all(c == 0 for c in codes)
                    self.sim.ml.finish(job.name, ok, f"process exit codes {codes}")

    def _start(self, job: SimJob) -> list[subprocess.Popen[bytes]]:
        props = job.props
        distributed = (props.get("distribution") or {}).get("distributionType") == "PyTorch"
        per_node, world = job.processes_per_node, job.nodes * job.processes_per_node
        base = {
            **os.environ,
            **(props.get("environmentVariables") or {}),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        master = str(free_port())
        procs = []
        for node in range(job.nodes):
            work = self.root / job.name / f"node-{node}"
            work.mkdir(parents=True, exist_ok=True)
            for local in range(per_node):
                env = dict(base)
                if distributed:
                    env.update(
                        RANK=str(node * per_node + local),
                        LOCAL_RANK=str(local),
                        WORLD_SIZE=str(world),
                        LOCAL_WORLD_SIZE=str(per_node),
                        NODE_RANK=str(node),
                        MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=master,
                    )
                with (work / f"process-{local}.log").open("ab") as log:
                    procs.append(
                        subprocess.Popen(
                            ["bash", "-c", props["command"]],
                            cwd=work,
                            env=env,
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
        return procs

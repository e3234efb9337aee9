"""The VMs' part in tests of the azure-vm backend, and the settings that point it at the simulator.

The ARM simulator creates VMs on paper: nothing boots. So when the simulator reports a VM
``Succeeded``, ``VmPlayer`` does what that VM's cloud-init would do: it decodes the VM's own
custom data (as the PUT sent it), takes the runner's environment file and systemd unit from it,
and runs the unit's ``ExecStart`` command line, ``${VAR}``s filled from that environment file,
as a local process in its own session. Two substitutions only: this interpreter for
``/opt/ephemerid/bin/python`` (the runner is this checkout, not a wheel from the index), and a
scratch folder for ``/var/lib/ephemerid/work``; ``--vm-name`` is the VM's computer name (its
hostname on Azure). When a VM leaves the simulator's inventory (deleted or evicted), the player
kills that session, as losing the VM would. What is not played: package installation, systemd,
the managed identity (the bucket is a local folder), and the GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from drive import kill_session
from ephemerid.compute.azure_vm import ENV_FILE, UNIT_FILE, VENV
from ephemerid.testing.arm import SUBSCRIPTION, ArmSimulator, SimVm

GROUP = "eph-jobs"
NETWORK = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/eph-net/providers/Microsoft.Network"
SUBNET = f"{NETWORK}/virtualNetworks/eph-{{region}}/subnets/jobs"
IDENTITY = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/eph-net/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/eph-vm"
)
IDENTITY_CLIENT_ID = "7d6f8a52-0000-4000-8000-00000000c1d0"
TEST_SSH_KEY = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCtest ephemerid-tests"


def azure_env(home: Path, sim: ArmSimulator, **more: str) -> dict[str, str]:
    """EPHEMERID_* settings for an ephemerid whose azure-vm backend rents from ``sim``."""
    return {
        "EPHEMERID_HOME": str(home),
        "EPHEMERID_BACKEND": "azure-vm",
        "EPHEMERID_AZURE_SUBSCRIPTION_ID": SUBSCRIPTION,
        "EPHEMERID_COMPUTE_RESOURCE_GROUP": GROUP,
        "EPHEMERID_COMPUTE_SUBNET_ID": SUBNET,
        "EPHEMERID_COMPUTE_REGIONS": "eastus,westus2",
        "EPHEMERID_VM_IDENTITY_ID": IDENTITY,
        "EPHEMERID_VM_IDENTITY_CLIENT_ID": IDENTITY_CLIENT_ID,
        "EPHEMERID_VM_SSH_PUBLIC_KEY": TEST_SSH_KEY,
        "EPHEMERID_ARM_ENDPOINT": sim.endpoint,
        "EPHEMERID_SCHEDULED_EVENTS_URL": sim.scheduled_events_url,
        "EPHEMERID_CAPACITY_BACKOFF_S": "0.05",
        "EPHEMERID_ARM_RETRY_S": "0.01",
        "EPHEMERID_HEARTBEAT_S": "0.5",
        "EPHEMERID_GRACE_S": "2",
        "EPHEMERID_PROVISION_TIMEOUT_S": "20",
        **more,
    }


def boot_files(vm: SimVm) -> tuple[dict[str, str], str]:
    """The runner's environment file and systemd unit, from the VM's decoded custom data."""
    config = yaml.safe_load(vm.custom_data())
    files = {f["path"]: f["content"] for f in config["write_files"]}
    env = dict(line.split("=", 1) for line in files[ENV_FILE].splitlines() if line)
    return env, files[UNIT_FILE]


def exec_start(vm: SimVm, work: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart as an argv, the way systemd fills ``${VAR}`` (one word each)."""
    env, unit = boot_files(vm)
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    argv = [
        re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)
        for word in line.removeprefix("ExecStart=").split()
    ]
    assert argv[0] == f"{VENV}/bin/python", argv
    argv[0] = sys.executable
    argv[argv.index("--work-dir") + 1] = str(work)
    computer = vm.body["properties"]["osProfile"]["computerName"]
    return [*argv, "--vm-name", computer], env


class VmPlayer:
    """Boots the runner of every VM the simulator reports running; kills it when the VM goes."""

    def __init__(self, sim: ArmSimulator, root: Path) -> None:
        self.sim, self.root = sim, root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> VmPlayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proc in self.procs.values():
            kill_session(proc)

    def booted(self) -> list[str]:
        return list(self.procs)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            live = {vm.name: vm for vm in self.sim.inventory()}
            for name, vm in live.items():
                if vm.state == "Succeeded" and name not in self.procs:
                    self.procs[name] = self._boot(vm)
            for name, proc in self.procs.items():
                if name not in live:
                    kill_session(proc)

    def _boot(self, vm: SimVm) -> subprocess.Popen[bytes]:
        work = self.root / vm.name
        work.mkdir(parents=True, exist_ok=True)
        argv, env = exec_start(vm, work)
        with (self.root / f"{vm.name}.log").open("ab") as log:
            return subprocess.Popen(
                argv,
                cwd=work,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

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

The VM's deadline timer is played too: once its ``OnCalendar`` time has come, the player runs the
deadline unit's ``ExecStart`` (the ``imds.py`` the custom data carries, written to a scratch file)
with this interpreter in isolated mode without site-packages (``-I -S``: the image's python has
no ephemerid), the unit's environment file and nothing else but ``EPHEMERID_IMDS``, the VM's own
metadata service in the simulator. ``boot_after_s`` delays the runner's start (a slow boot).

A reboot the simulator is told of (``sim.reboot``) is played as systemd would play it with the
rendered units: every process of the VM is killed (SIGKILL, its session), then, as at boot, the
runner's unit starts again only if it is enabled (``WantedBy=multi-user.target`` in its
``[Install]`` and a ``systemctl enable`` of it in the cloud-init) and the unit that adds its
firewall rule is enabled or required by it (its ``ExecStartPre`` checks the rule); the deadline
timer is enabled and ``Persistent=true``, so its self-delete runs again once due. The work folder
is kept, as the OS disk is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from drive import kill_session
from ephemerid.compute.azure_vm import ENV_FILE, UNIT_FILE, VENV
from ephemerid.compute.vm_body import (
    DEADLINE_TIMER_FILE,
    DEADLINE_UNIT_FILE,
    FIREWALL_UNIT,
    FIREWALL_UNIT_FILE,
    IMDS_FILE,
    RUNNER_UNIT,
)
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
        "EPHEMERID_ARM_READ_SETTLE_S": "0",  # a 404 needs only the GETs in a row to be believed
        "EPHEMERID_HEARTBEAT_S": "0.5",
        "EPHEMERID_GRACE_S": "2",
        "EPHEMERID_PROVISION_TIMEOUT_S": "20",
        **more,
    }


def written_files(vm: SimVm) -> dict[str, str]:
    """Every file the VM's cloud-init writes, by path, from its decoded custom data."""
    config = yaml.safe_load(vm.custom_data())
    return {f["path"]: f["content"] for f in config["write_files"]}


def env_file(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def boot_files(vm: SimVm) -> tuple[dict[str, str], str]:
    """The runner's environment file and systemd unit, from the VM's decoded custom data."""
    files = written_files(vm)
    return env_file(files[ENV_FILE]), files[UNIT_FILE]


def unit_command(files: dict[str, str], unit_path: str) -> tuple[list[str], dict[str, str]]:
    """A unit's ExecStart as an argv, the way systemd fills ``${VAR}`` (one word each) from the
    unit's EnvironmentFiles, and that environment."""
    unit = files[unit_path]
    env: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("EnvironmentFile="):
            env.update(env_file(files[line.removeprefix("EnvironmentFile=")]))
    line = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    argv = [
        re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word)
        for word in line.removeprefix("ExecStart=").split()
    ]
    return argv, env


def exec_start(vm: SimVm, work: Path) -> tuple[list[str], dict[str, str]]:
    """The runner unit's ExecStart as an argv, and its environment."""
    argv, env = unit_command(written_files(vm), UNIT_FILE)
    assert argv[0] == f"{VENV}/bin/python", argv
    argv[0] = sys.executable
    argv[argv.index("--work-dir") + 1] = str(work)
    at = argv.index("--run-as")  # the VM's job user is not on this machine: tests/reliability/
    del argv[at : at + 2]  # test_run_as.py runs the runner with --run-as for real
    computer = vm.body["properties"]["osProfile"]["computerName"]
    return [*argv, "--vm-name", computer], env


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit's sections, each key with every value it is given (in order)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.replace("\\\n", "").splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def enabled(vm: SimVm, unit: str, unit_path: str) -> bool:
    """Whether the VM's cloud-init enables ``unit`` so that it starts at every boot."""
    wanted = unit_sections(written_files(vm)[unit_path]).get("Install", {}).get("WantedBy", [])
    commands = yaml.safe_load(vm.custom_data())["runcmd"]
    enables = any(c[:2] == ["systemctl", "enable"] and unit in c for c in commands)
    return "multi-user.target" in wanted and enables


def starts_at_boot(vm: SimVm) -> bool:
    """Whether the runner comes back after a reboot: its unit enabled, and its firewall rule's
    unit run at boot (enabled, or required by the runner's unit)."""
    files = written_files(vm)
    required = unit_sections(files[UNIT_FILE]).get("Unit", {}).get("Requires", [])
    firewall = FIREWALL_UNIT_FILE in files and (
        enabled(vm, FIREWALL_UNIT, FIREWALL_UNIT_FILE) or FIREWALL_UNIT in " ".join(required)
    )
    return enabled(vm, RUNNER_UNIT, UNIT_FILE) and firewall


def timer_due(vm: SimVm) -> datetime:
    """When the VM's deadline timer fires (its ``OnCalendar=... UTC``)."""
    timer = written_files(vm)[DEADLINE_TIMER_FILE]
    line = next(x for x in timer.splitlines() if x.startswith("OnCalendar="))
    when = line.removeprefix("OnCalendar=").removesuffix(" UTC")
    return datetime.strptime(when, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


class VmPlayer:
    """Boots the runner of every VM the simulator reports running; kills it when the VM goes."""

    def __init__(self, sim: ArmSimulator, root: Path, boot_after_s: float = 0.0) -> None:
        self.sim, self.root, self.boot_after_s = sim, root, boot_after_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.deadlines: dict[str, subprocess.Popen[bytes]] = {}  # the VMs' self-deletes
        self._seen: dict[str, float] = {}
        self._reboots: dict[str, int] = {}
        self.down: set[str] = set()  # VMs whose runner did not come back after a reboot
        self.restarted: list[str] = []  # a VM's name for each reboot played
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> VmPlayer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proc in [*self.procs.values(), *self.deadlines.values()]:
            kill_session(proc)

    def booted(self) -> list[str]:
        return list(self.procs)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            live = {vm.name: vm for vm in self.sim.inventory()}
            for name, vm in live.items():
                if vm.state != "Succeeded":
                    continue
                if vm.reboots > self._reboots.setdefault(name, 0):
                    self._reboot(vm)
                if name in self.down:
                    continue
                up_s = time.monotonic() - self._seen.setdefault(name, time.monotonic())
                if name not in self.procs and up_s >= self.boot_after_s:
                    self.procs[name] = self._boot(vm)
                if name not in self.deadlines and datetime.now(UTC) >= timer_due(vm):
                    self.deadlines[name] = self._deadline(vm)
            for name, proc in [*self.procs.items(), *self.deadlines.items()]:
                if name not in live:
                    kill_session(proc)

    def _reboot(self, vm: SimVm) -> None:
        """Every process of the VM ends; what starts again at boot, the loop starts."""
        self._reboots[vm.name] = vm.reboots
        for procs in (self.procs, self.deadlines):
            if (proc := procs.pop(vm.name, None)) is not None:
                kill_session(proc)
        self.restarted.append(vm.name)
        self._seen[vm.name] = time.monotonic()  # the boot takes boot_after_s again
        if not starts_at_boot(vm):
            self.down.add(vm.name)

    def _boot(self, vm: SimVm) -> subprocess.Popen[bytes]:
        work = self.root / vm.name
        work.mkdir(parents=True, exist_ok=True)
        argv, env = exec_start(vm, work)
        return self._start(argv, {**os.environ, **env}, work, f"{vm.name}.log")

    def _deadline(self, vm: SimVm) -> subprocess.Popen[bytes]:
        files = written_files(vm)
        script = self.root / f"{vm.name}-imds.py"
        script.write_text(files[IMDS_FILE])
        argv, env = unit_command(files, DEADLINE_UNIT_FILE)
        assert argv[:2] == ["python3", IMDS_FILE], argv
        argv[:2] = [sys.executable, "-I", "-S", str(script)]
        env = {"PATH": os.environ["PATH"], **env, "EPHEMERID_IMDS": self.sim.imds_url(vm.name)}
        return self._start(argv, env, self.root, f"{vm.name}-deadline.log")

    def _start(
        self, argv: list[str], env: dict[str, str], cwd: Path, log_name: str
    ) -> subprocess.Popen[bytes]:
        with (self.root / log_name).open("ab") as log:
            return subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

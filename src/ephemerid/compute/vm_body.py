"""What azure-vm sends ARM for one job: the placements it tries, the VM body and its cloud-init.

The NIC and the OS disk are defined inside the VM with ``deleteOption: Delete``, so one DELETE
removes all three; there is no public IP; the VM gets the configured user-assigned identity and
the tags ``ephemerid-job`` and ``ephemerid-deadline``. Its cloud-init installs a pinned runner and
starts it with the job's URI and nothing else: no key, token or SAS (the runner reaches the bucket
with the VM's identity), and nothing from the spec in shell text (values go to an environment
file systemd reads, checked against a strict pattern first).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml

from ephemerid.azure.compute import TAG_DEADLINE, TAG_JOB, check_env
from ephemerid.errors import BadInput
from ephemerid.settings import AzureVmSettings
from ephemerid.spec import ComputeRequest, Spot

ENV_FILE = "/etc/ephemerid/runner.env"
UNIT_FILE = "/etc/systemd/system/ephemerid-runner.service"
VENV = "/opt/ephemerid"
WORK_DIR = "/var/lib/ephemerid/work"
ADMIN = "ephemerid"
UNIT = f"""[Unit]
Description=ephemerid runner: one job, then this VM is deleted
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
EnvironmentFile={ENV_FILE}
WorkingDirectory=/var/lib/ephemerid
ExecStart={VENV}/bin/python -m ephemerid.runner --artifacts ${{EPHEMERID_ARTIFACTS}} \
--job ${{EPHEMERID_JOB}} --work-dir {WORK_DIR} --scheduled-events ${{EPHEMERID_SCHEDULED_EVENTS}}
Restart=no
"""
_SAFE_PACKAGE = re.compile(r"^[A-Za-z0-9._:/@+=<>!~\[\],-]+$")


@dataclass(frozen=True)
class Placement:
    sku: str
    region: str
    zone: str
    spot: bool

    def __str__(self) -> str:
        where = f"{self.region} zone {self.zone}" if self.zone else self.region
        return f"{self.sku} {'spot' if self.spot else 'on-demand'} in {where}"


def placements(request: ComputeRequest, regions: tuple[str, ...], sku: str) -> list[Placement]:
    """Every option in the order tried: spot choice, then the spec's SKUs, then regions/zones."""
    spots = {Spot.NEVER: [False], Spot.PREFER: [True, False], Spot.ONLY: [True]}[request.spot]
    where = [(r.partition(":")[0], r.partition(":")[2]) for r in regions]
    return [
        Placement(s, r, z, spot) for spot in spots for s in request.skus or [sku] for r, z in where
    ]


def cloud_init(env: dict[str, str], package: str, python: str) -> str:
    """The VM's cloud-config: write the runner's environment and unit, install it, start it."""
    check_env("azure-vm", "the VM's environment", env)
    for what, value in (("EPHEMERID_RUNNER_PACKAGE", package), ("EPHEMERID_VM_PYTHON", python)):
        if not _SAFE_PACKAGE.match(value):
            raise BadInput(f"{what}='{value}' is not a plain package spec or path")
    config = {
        "package_update": True,
        "packages": ["python3-venv"],
        "write_files": [
            {
                "path": ENV_FILE,
                "permissions": "0644",
                "content": "".join(f"{k}={v}\n" for k, v in env.items()),
            },
            {"path": UNIT_FILE, "permissions": "0644", "content": UNIT},
        ],
        "runcmd": [
            ["mkdir", "-p", WORK_DIR],
            [python, "-m", "venv", "--system-site-packages", VENV],
            [f"{VENV}/bin/pip", "install", "--no-input", "--disable-pip-version-check", package],
            ["systemctl", "daemon-reload"],
            ["systemctl", "start", "--no-block", "ephemerid-runner.service"],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, width=1000)


@dataclass(frozen=True)
class VmBody:
    """Everything about a job's VM that is not the job: the settings and what to install."""

    config: AzureVmSettings
    package: str
    public_key: str

    def render(
        self, job_id: str, name: str, placement: Placement, env: dict[str, str], deadline: datetime
    ) -> dict[str, Any]:
        """The PUT body of VM ``name`` for job ``job_id``, placed at ``placement``."""
        custom = cloud_init(env, self.package, self.config.python)
        properties: dict[str, Any] = {
            "hardwareProfile": {"vmSize": placement.sku},
            "storageProfile": self._storage(),
            "osProfile": self._os(name, custom),
            "networkProfile": self._network(name, placement),
            "priority": "Spot" if placement.spot else "Regular",
        }
        if placement.spot:
            properties.update(evictionPolicy="Delete", billingProfile={"maxPrice": -1})
        body: dict[str, Any] = {
            "location": placement.region,
            "tags": {TAG_JOB: job_id, TAG_DEADLINE: deadline.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "identity": {
                "type": "UserAssigned",
                "userAssignedIdentities": {self.config.identity_id: {}},
            },
            "properties": properties,
        }
        if placement.zone:
            body["zones"] = [placement.zone]
        return body

    def _storage(self) -> dict[str, Any]:
        publisher, offer, image_sku, version = self.config.image.split(":")
        return {
            "imageReference": {
                "publisher": publisher,
                "offer": offer,
                "sku": image_sku,
                "version": version,
            },
            "osDisk": {
                "createOption": "FromImage",
                "deleteOption": "Delete",
                "managedDisk": {"storageAccountType": "StandardSSD_LRS"},
            },
        }

    def _os(self, name: str, custom: str) -> dict[str, Any]:
        key = {"path": f"/home/{ADMIN}/.ssh/authorized_keys", "keyData": self.public_key}
        return {
            "computerName": name,
            "adminUsername": ADMIN,
            "customData": base64.b64encode(custom.encode()).decode(),
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "ssh": {"publicKeys": [key]},
            },
        }

    def _network(self, name: str, placement: Placement) -> dict[str, Any]:
        subnet = self.config.subnet_id.replace("{region}", placement.region)
        nic = {
            "primary": True,
            "deleteOption": "Delete",
            "ipConfigurations": [{"name": "ipconfig1", "properties": {"subnet": {"id": subnet}}}],
        }
        return {
            "networkApiVersion": "2022-11-01",
            "networkInterfaceConfigurations": [{"name": f"{name}-nic", "properties": nic}],
        }


def throwaway_public_key() -> str:
    """Linux VMs need an SSH key: one whose private half is never kept, when none is set."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=3072).public_key()
    openssh = serialization.Encoding.OpenSSH
    return key.public_bytes(openssh, serialization.PublicFormat.OpenSSH).decode()

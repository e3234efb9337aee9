"""What azure-vm sends ARM for one job: the placements it tries, the VM body and its cloud-init.

The NIC and the OS disk are defined inside the VM with ``deleteOption: Delete``, so one DELETE
removes all three; there is no public IP; the VM gets the configured user-assigned identity and
the tags ``ephemerid-job`` and ``ephemerid-deadline``. Its cloud-init installs a pinned runner and
starts it with the job's URI and nothing else: no key, token or SAS (the runner reaches the bucket
with the VM's identity), and nothing from the spec in shell text (values go to an environment
file systemd reads, checked against a strict pattern first).

The deadline is the VM's own too: before anything is installed, cloud-init enables a systemd
timer set to the deadline, whose unit runs ``ephemerid/imds.py`` (written to the VM as it is,
standard library only, so it works even if the runner's install failed) to DELETE the VM through
ARM with its identity. The runner is told to stop the entrypoint by ``stop_by``, early enough
before the deadline to write its result.

The runner runs as root; the user's code runs as ``JOB_USER`` (``--run-as``), a system user with
no login shell, no sudo and no groups, made right after the deadline is armed. It cannot read
``/etc/ephemerid`` (0700; its environment files 0600), cannot write the runner's venv (root's,
0755: the entrypoint runs on its interpreter), and a firewall rule for its uid alone rejects the
instance metadata service, where the VM identity's token lives; the runner's unit refuses to start
without that rule.

A platform reboot or redeploy keeps the OS disk and ends every process, and iptables rules do not
outlive it: so the rule is a oneshot unit of its own, and it and the runner's unit are enabled
(``WantedBy=multi-user.target``), so both start again at boot. The runner's unit also restarts on
failure, at most ``START_LIMIT_BURST`` times in ``START_LIMIT_S``. A runner started again reruns the
job from its last uploaded checkpoint, or stands down (``ephemerid.restarts``).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ephemerid import imds
from ephemerid.azure.compute import TAG_DEADLINE, TAG_JOB, check_env, write_deadline
from ephemerid.errors import BadInput
from ephemerid.settings import AzureVmSettings
from ephemerid.spec import ComputeRequest, Spot

ENV_FILE = "/etc/ephemerid/runner.env"
DEADLINE_ENV_FILE = "/etc/ephemerid/deadline.env"
RUNNER_UNIT = "ephemerid-runner.service"
UNIT_FILE = f"/etc/systemd/system/{RUNNER_UNIT}"
FIREWALL_UNIT = "ephemerid-firewall.service"
FIREWALL_UNIT_FILE = f"/etc/systemd/system/{FIREWALL_UNIT}"
IMDS_FILE = "/etc/ephemerid/imds.py"
DEADLINE_UNIT_FILE = "/etc/systemd/system/ephemerid-deadline.service"
DEADLINE_TIMER_FILE = "/etc/systemd/system/ephemerid-deadline.timer"
VENV = "/opt/ephemerid"
WORK_DIR = "/var/lib/ephemerid/work"
ADMIN = "ephemerid"
JOB_USER = "ephemerid-job"
IMDS_ADDRESS = "169.254.169.254"
NO_IMDS = ["-m", "owner", "--uid-owner", JOB_USER, "-d", IMDS_ADDRESS, "-j", "REJECT"]
IPTABLES = "/usr/sbin/iptables"
USERADD = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent"]
# Fixed commands, nothing of the job in them: the job's user, kept from IMDS and the runner's files.
JOB_USER_COMMANDS = [
    [*USERADD, "--shell", "/usr/sbin/nologin", "--user-group", JOB_USER],
    ["systemctl", "enable", "--now", FIREWALL_UNIT],  # iptables -A, and at every boot again
    ["chmod", "0700", "/etc/ephemerid"],
]
RESTART_S = 15
START_LIMIT_BURST = 5
START_LIMIT_S = 900
FIREWALL = f"""[Unit]
Description=ephemerid: keep the job's user from the instance metadata service
Before={RUNNER_UNIT}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={IPTABLES} -A OUTPUT {" ".join(NO_IMDS)}

[Install]
WantedBy=multi-user.target
"""
UNIT = f"""[Unit]
Description=ephemerid runner: one job, then this VM is deleted
Wants=network-online.target
After=network-online.target {FIREWALL_UNIT}
Requires={FIREWALL_UNIT}
StartLimitIntervalSec={START_LIMIT_S}
StartLimitBurst={START_LIMIT_BURST}

[Service]
Type=exec
EnvironmentFile={ENV_FILE}
EnvironmentFile={DEADLINE_ENV_FILE}
WorkingDirectory=/var/lib/ephemerid
ExecStartPre={IPTABLES} -C OUTPUT {" ".join(NO_IMDS)}
ExecStart={VENV}/bin/python -m ephemerid.runner --artifacts ${{EPHEMERID_ARTIFACTS}} \
--job ${{EPHEMERID_JOB}} --work-dir {WORK_DIR} --scheduled-events ${{EPHEMERID_SCHEDULED_EVENTS}} \
--stop-by ${{EPHEMERID_STOP_BY}} --run-as {JOB_USER}
Restart=on-failure
RestartSec={RESTART_S}

[Install]
WantedBy=multi-user.target
"""
DEADLINE_UNIT = """[Unit]
Description=ephemerid: this VM's deadline has passed: delete it through ARM
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
EnvironmentFile={env}
ExecStart={python} {script} --deadline ${{EPHEMERID_DEADLINE}}
Restart=always
RestartSec=30
"""
DEADLINE_TIMER = """[Unit]
Description=ephemerid: delete this VM at its deadline

[Timer]
OnCalendar={when} UTC
AccuracySec=1s
Persistent=true

[Install]
WantedBy=timers.target
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


@dataclass(frozen=True)
class Deadline:
    """When the VM deletes itself (``at``, also its tag) and its runner must stop (``stop_by``);
    ``env`` is what the self-delete is told besides: the ARM endpoint and the identity."""

    at: datetime
    stop_by: datetime
    env: dict[str, str]

    def files(self, python: str) -> list[dict[str, str]]:
        """The environment file, the self-delete script, its unit and its timer."""
        env = {
            "EPHEMERID_DEADLINE": write_deadline(self.at),
            "EPHEMERID_STOP_BY": write_deadline(self.stop_by),
            **self.env,
        }
        check_env("azure-vm", "the VM's deadline environment", env)
        unit = DEADLINE_UNIT.format(env=DEADLINE_ENV_FILE, python=python, script=IMDS_FILE)
        timer = DEADLINE_TIMER.format(when=self.at.strftime("%Y-%m-%d %H:%M:%S"))
        return [
            _file(DEADLINE_ENV_FILE, "".join(f"{k}={v}\n" for k, v in env.items()), "0600"),
            _file(IMDS_FILE, _imds_source(), "0600"),
            _file(DEADLINE_UNIT_FILE, unit),
            _file(DEADLINE_TIMER_FILE, timer),
        ]


def cloud_init(env: dict[str, str], package: str, python: str, deadline: Deadline) -> str:
    """The VM's cloud-config: arm the deadline, write the runner's environment and unit, install
    it, start it."""
    check_env("azure-vm", "the VM's environment", env)
    for what, value in (("EPHEMERID_RUNNER_PACKAGE", package), ("EPHEMERID_VM_PYTHON", python)):
        if not _SAFE_PACKAGE.match(value):
            raise BadInput(f"{what}='{value}' is not a plain package spec or path")
    config = {
        "package_update": True,
        "packages": ["python3-venv", "iptables"],
        "write_files": [
            _file(ENV_FILE, "".join(f"{k}={v}\n" for k, v in env.items()), "0600"),
            _file(FIREWALL_UNIT_FILE, FIREWALL),
            _file(UNIT_FILE, UNIT),
            *deadline.files(python),
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "ephemerid-deadline.timer"],
            *JOB_USER_COMMANDS,
            ["mkdir", "-p", WORK_DIR],
            [python, "-m", "venv", "--system-site-packages", VENV],
            [f"{VENV}/bin/pip", "install", "--no-input", "--disable-pip-version-check", package],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", RUNNER_UNIT],  # so that it starts again after a reboot
            ["systemctl", "start", "--no-block", RUNNER_UNIT],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, width=1000)


def _file(path: str, content: str, permissions: str = "0644") -> dict[str, str]:
    return {"path": path, "permissions": permissions, "content": content}


@cache
def _imds_source() -> str:
    return Path(imds.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class VmBody:
    """Everything about a job's VM that is not the job: the settings and what to install."""

    config: AzureVmSettings
    package: str
    public_key: str

    def render(
        self, job_id: str, name: str, placement: Placement, env: dict[str, str], deadline: Deadline
    ) -> dict[str, Any]:
        """The PUT body of VM ``name`` for job ``job_id``, placed at ``placement``."""
        custom = cloud_init(env, self.package, self.config.python, deadline)
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
            "tags": {TAG_JOB: job_id, TAG_DEADLINE: write_deadline(deadline.at)},
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

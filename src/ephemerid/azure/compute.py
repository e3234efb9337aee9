"""What the Azure compute backends (azure-vm, azure-ml) share: names, tags, the runner's
environment, the deadline they give the compute, and how they retry ARM.

Nothing a backend sends is taken from the job as it is: its names come from the job id (checked
against the id's pattern) and its environment values must match ``SAFE_ENV_VALUE``. A storage
URL with a query string (a SAS token) is never sent: the compute reaches storage with its identity.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from ephemerid.errors import ComputeError
from ephemerid.imds import DEADLINE_FORMAT, parse_deadline

if TYPE_CHECKING:
    from ephemerid.settings import Settings

TAG_JOB = "ephemerid-job"  # on every VM and Azure ML job: the job it runs (list_owned reads it)
TAG_DEADLINE = "ephemerid-deadline"  # on a VM: when anything still running is overdue
RETRIES = 3  # after the first try, with delays arm_retry_s, 2x, 4x

# What a cloud backend puts in a name or an environment value it sends: nothing else passes.
_JOB_ID = re.compile(r"^[a-z]+-[0-9a-f]{12}$")
SAFE_ENV_VALUE = re.compile(r"^[A-Za-z0-9._:/@+=?&%-]+$")


def compute_name(backend: str, what: str, job_id: str, attempt: int) -> str:
    """``eph-<job>-<attempt>``: named from the job, a retried provision finds what it started."""
    if not _JOB_ID.match(job_id):
        raise ComputeError(f"{backend}: job id '{job_id}' cannot name {what}")
    return f"eph-{job_id}-{attempt}"


def runner_env(
    artifacts_uri: str, job_id: str, blob_service_uri: str, identity_client_id: str
) -> dict[str, str]:
    """All the runner on cloud compute is told: the bucket and the job and, for an Azure bucket,
    its blob endpoint and the identity to reach it with; never a key."""
    for what, url in (("the bucket", artifacts_uri), ("the blob endpoint", blob_service_uri)):
        if "?" in url:
            raise ComputeError(
                f"{what} '{url.partition('?')[0]}?…' carries a query string (a SAS token?): "
                "cloud compute is never given one; set the URL alone"
            )
    env = {"EPHEMERID_ARTIFACTS": artifacts_uri, "EPHEMERID_JOB": job_id}
    if blob_service_uri:
        env["EPHEMERID_STORAGE__blobServiceUri"] = blob_service_uri
        env["EPHEMERID_STORAGE__credential"] = "managedidentity"
    if blob_service_uri and identity_client_id:
        env["EPHEMERID_STORAGE__clientId"] = identity_client_id
    return env


def check_env(backend: str, where: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` unchanged if every value is plain; ComputeError naming the first that is not."""
    for key, value in env.items():
        if not SAFE_ENV_VALUE.match(value):
            raise ComputeError(f"{backend}: {key}='{value}' cannot go into {where}")
    return env


def deadline_margin_s(settings: Settings) -> float:
    """How long past the job's max runtime its compute may live: provisioning, then the grace
    to end it, then the heartbeat timeout that declares it lost."""
    return settings.provision_timeout_s + settings.grace_s + settings.heartbeat_timeout_s


def stop_margin_s(settings: Settings) -> float:
    """How long before its compute's deadline the runner must stop the entrypoint: the grace to
    end it, then the heartbeat timeout's worth of time to upload and write the result."""
    return settings.grace_s + settings.heartbeat_timeout_s


def write_deadline(when: datetime) -> str:
    """A deadline as tags and the VM's files carry it (``2030-01-01T12:00:00Z``)."""
    return when.strftime(DEADLINE_FORMAT)


def read_deadline(text: str | None) -> datetime | None:
    """A deadline tag read back; None when it is missing or not one ephemerid wrote."""
    try:
        return parse_deadline(text) if text else None
    except ValueError:
        return None


def retry_delays(base_s: float, retries: int = RETRIES) -> Iterator[float]:
    """The sleep before each try of an ARM call: none, then ``base_s`` doubling."""
    yield 0.0
    for i in range(retries):
        yield base_s * 2**i

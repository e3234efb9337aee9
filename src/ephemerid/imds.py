"""The Azure instance metadata service (IMDS), as the agents on a job's VM use it.

``ScheduledEvents``: the runner watches it for a ``Preempt`` of its VM (a spot eviction). Azure
turns the service on for a VM at its first call, which may take up to two minutes to answer, so
the runner warms it up when it starts (``warm_up``), while it stages the job, not once the
entrypoint runs.

The VM's own deadline, the third line of teardown (DESIGN.md rule 2): ``python3 imds.py
--deadline 2030-01-01T12:00:00Z``. azure-vm's cloud-init writes this file to the VM as it is
(``/etc/ephemerid/imds.py``) and a systemd timer runs it with the image's python at the job's
deadline (the VM's ``ephemerid-deadline`` tag). It asks IMDS for this VM's resource id and for a
token of the VM's managed identity for ARM, and DELETEs the VM (``forceDeletion=false``): only
a delete through ARM ends the bill, a shutdown from inside does not. It DELETEs again every
``--retry-s`` until the VM, and this process with it, is gone.

It must run where the runner's install failed, so it imports nothing outside the standard
library: keep it so. What it reads, from the environment, never from a job: ``EPHEMERID_IMDS``
(default ``http://169.254.169.254``; the tests' VM player gives each played VM its own),
``EPHEMERID_ARM_ENDPOINT`` (default ``https://management.azure.com``) and
``EPHEMERID_VM_IDENTITY_CLIENT_ID`` (which user-assigned identity, if the VM has several).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

IMDS = "http://169.254.169.254"
ARM = "https://management.azure.com"
COMPUTE_API = "2021-02-01"
IDENTITY_API = "2018-02-01"
VM_API = "2024-07-01"
DEADLINE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # the tag's and the files' form: UTC, to the second
_DEADLINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_VM_ID = re.compile(
    r"^/subscriptions/[0-9a-fA-F-]+/resourceGroups/[\w.()-]+/providers/"
    r"Microsoft\.Compute/virtualMachines/[\w.-]+$",
    re.IGNORECASE,
)
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "169.254.169.254")
WARM_UP_S = 180.0  # Azure: a VM's first Scheduled Events call may take up to 2 minutes to answer


def parse_deadline(text: str) -> datetime:
    """A deadline written as ``DEADLINE_FORMAT``; ValueError naming the text if it is not."""
    if not _DEADLINE.match(text):
        raise ValueError(f"deadline '{text}' is not a UTC time like 2030-01-01T12:00:00Z")
    return datetime.strptime(text, DEADLINE_FORMAT).replace(tzinfo=UTC)


def seconds_until(when: datetime) -> float:
    """Seconds from now until ``when``; 0 once it has passed."""
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def _checked(url: str, what: str) -> str:
    """``url`` if it is https, or http to this machine or IMDS: a token never crosses plain http."""
    parsed = urllib.parse.urlsplit(url)
    plain_ok = parsed.scheme == "http" and parsed.hostname in _LOCAL_HOSTS
    if parsed.scheme != "https" and not plain_ok:
        raise ValueError(f"{what} '{url}' must be https (http only to this machine)")
    return url.rstrip("/")


def _get_json(url: str, timeout_s: float, **headers: str) -> Any:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (checked: http(s) only)
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310
        return json.load(answer)


class ScheduledEvents:
    """The VM's Scheduled Events (instance metadata service): is this VM about to be preempted?"""

    def __init__(self, url: str, vm_name: str, timeout_s: float = 2.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"scheduled events URL '{url}' must be http(s)")
        self.url, self.vm_name, self.timeout_s = url, vm_name, timeout_s
        self._warming: threading.Thread | None = None
        self._first: dict[str, Any] | None = None  # the warm-up's answer, not yet looked at

    def warm_up(self, wait_s: float | None = None) -> bool:
        """Send the first call now, which turns the service on, and wait for it at most
        ``wait_s`` (default ``timeout_s``); it goes on in the background, up to ``WARM_UP_S``,
        and ``preempt`` asks again only once it has answered. Whether it answered in time."""
        answered = threading.Event()

        def first_call() -> None:
            with contextlib.suppress(OSError, ValueError):  # if so, preempt asks again
                self._first = _get_json(self.url, WARM_UP_S, Metadata="true")
            answered.set()

        self._warming = threading.Thread(target=first_call, daemon=True)
        self._warming.start()
        return answered.wait(self.timeout_s if wait_s is None else wait_s)

    @property
    def warming(self) -> bool:
        """Whether the first call is still waiting for its answer."""
        return self._warming is not None and self._warming.is_alive()

    def preempt(self) -> dict[str, Any] | None:
        """The Preempt event naming this VM, if one is scheduled; None (also when unreachable,
        and while the first call has not answered yet)."""
        if self.warming:
            return None
        document, self._first = self._first, None
        try:
            document = document or _get_json(self.url, self.timeout_s, Metadata="true")
        except (OSError, ValueError):
            return None
        for event in document.get("Events") or []:
            if event.get("EventType") == "Preempt" and self.vm_name in event.get("Resources", []):
                return dict(event)
        return None


class SelfDelete:
    """This VM deleting itself through ARM with its own managed identity."""

    def __init__(self, imds: str, arm: str, client_id: str = "", timeout_s: float = 10.0) -> None:
        self.imds, self.arm = _checked(imds, "IMDS endpoint"), _checked(arm, "ARM endpoint")
        self.client_id, self.timeout_s = client_id, timeout_s

    def resource_id(self) -> str:
        """This VM's ARM id, as IMDS says it: the VM deletes itself, never a name it was told."""
        url = f"{self.imds}/metadata/instance/compute?api-version={COMPUTE_API}"
        found = str(_get_json(url, self.timeout_s, Metadata="true").get("resourceId", ""))
        if not _VM_ID.match(found):
            raise ValueError(f"IMDS answered no VM resource id: '{found}'")
        return found

    def token(self) -> str:
        """A token of the VM's managed identity for ARM."""
        query = {"api-version": IDENTITY_API, "resource": f"{self.arm}/"}
        if self.client_id:
            query["client_id"] = self.client_id
        url = f"{self.imds}/metadata/identity/oauth2/token?{urllib.parse.urlencode(query)}"
        return str(_get_json(url, self.timeout_s, Metadata="true")["access_token"])

    def delete(self) -> int:
        """DELETE this VM (``forceDeletion=false``); the HTTP status ARM answered (2xx: taken)."""
        target = f"{self.arm}{self.resource_id()}?api-version={VM_API}&forceDeletion=false"
        headers = {"Authorization": f"Bearer {self.token()}"}
        request = urllib.request.Request(target, method="DELETE", headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                return int(answer.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imds.py", description=__doc__)
    parser.add_argument("--deadline", required=True, help="when this VM deletes itself (UTC)")
    parser.add_argument("--retry-s", type=float, default=30.0, help="between DELETE tries")
    args = parser.parse_args(argv)
    try:
        deadline = parse_deadline(args.deadline)
        vm = SelfDelete(
            os.environ.get("EPHEMERID_IMDS") or IMDS,
            os.environ.get("EPHEMERID_ARM_ENDPOINT") or ARM,
            os.environ.get("EPHEMERID_VM_IDENTITY_CLIENT_ID", ""),
        )
    except ValueError as exc:
        parser.error(str(exc))
    while (left := seconds_until(deadline)) > 0:  # the timer fires at the deadline; be sure
        time.sleep(min(left, 60.0))
    while True:  # until the VM is gone, and this process with it
        try:
            print(f"deadline {args.deadline} passed: deleting this VM: {vm.delete()}", flush=True)
        except (OSError, ValueError, KeyError) as exc:
            print(f"deadline {args.deadline} passed: deleting this VM failed: {exc}", flush=True)
        time.sleep(args.retry_s)


if __name__ == "__main__":
    sys.exit(main())

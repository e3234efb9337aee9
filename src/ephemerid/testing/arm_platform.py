"""What Azure's platform does to a VM, on request: the ARM simulator's scripted events.

``PlatformActions`` is mixed into ``VmRoutes`` (ephemerid.testing.arm_vms): ``preempt`` (a Preempt
event, then eviction), ``evict`` (a spot VM gone with no Preempt event: Azure's are best effort),
``slow_events`` (Scheduled Events slow to answer its first call), ``reboot`` (played by the tests'
VM player, as systemd would), ``stale_reads`` (404s of a VM that exists, as ARM's eventually
consistent reads give just after a create) and ``fail_provisioning`` (Failed while running).
"""

from __future__ import annotations

import time
import uuid
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ephemerid.testing.arm_vms import SimVm


class PlatformActions:
    _vms: dict[tuple[str, str], SimVm]
    _stale: dict[str | None, int]
    _incarnation: int
    events_asked: list[float]  # when each Scheduled Events call came (time.time())
    _events_warm_up_s: float
    _events_on_at: float
    _lock: Any

    def _tick(self) -> None:
        raise NotImplementedError

    def preempt(self, name: str, *, evict_after_s: float = 30.0) -> dict[str, Any]:
        """Post a Preempt event for spot VM ``name``; the platform deletes it after the notice."""
        with self._lock:
            vm = next((v for v in self._vms.values() if v.name == name), None)
            if vm is None or not vm.spot:
                raise ValueError(f"only an existing spot VM can be preempted, not '{name}'")
            vm.evict_at = time.monotonic() + evict_after_s
            vm.event = {
                "EventId": str(uuid.uuid4()),
                "EventType": "Preempt",
                "ResourceType": "VirtualMachine",
                "Resources": [name],
                "EventStatus": "Scheduled",
                "NotBefore": formatdate(time.time() + evict_after_s, usegmt=True),
                "Description": "Spot VM is being evicted",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            }
            self._incarnation += 1
            return dict(vm.event)

    def stale_reads(self, count: int, *, name: str | None = None) -> None:
        """Answer the next ``count`` GETs of VM ``name`` (None: of any VM) 404 although the VM
        exists: ARM's reads are eventually consistent, and one just after a create can miss it."""
        with self._lock:
            self._stale[name] = self._stale.get(name, 0) + count

    def fail_provisioning(self, name: str, *, power: str = "running", code: str = "") -> None:
        """Set VM ``name``'s provisioningState to Failed (with error ``code``, e.g. an extension
        that failed) while its power state is ``power``: Azure documents Failed as a state a
        running VM can be in, and recover from."""
        with self._lock:
            vm = next((v for v in self._vms.values() if v.name == name), None)
            if vm is None:
                raise ValueError(f"no VM '{name}' to fail")
            vm.state, vm.power = "Failed", power
            vm.error = {"code": code or "VMExtensionProvisioningError", "message": "simulated"}

    # -- what the platform does to a VM, on request ----------------------------------------

    def evict(self, name: str) -> None:
        """Evict spot VM ``name`` now, with no Preempt event first: Azure's are best effort."""
        with self._lock:
            vm = next((v for v in self._vms.values() if v.name == name), None)
            if vm is None or not vm.spot:
                raise ValueError(f"only an existing spot VM can be evicted, not '{name}'")
            vm.evict_at = time.monotonic()
            self._tick()

    def slow_events(self, first_answer_s: float) -> None:
        """Scheduled Events answers its next first call only ``first_answer_s`` later (on Azure,
        the first call turns the service on, up to two minutes); every call until then waits."""
        with self._lock:
            self._events_warm_up_s, self._events_on_at = first_answer_s, 0.0

    def reboot(self, name: str) -> None:
        """Reboot VM ``name`` as a platform maintenance or a redeploy does: every process on it
        ends, and it boots again from its OS disk (``VmPlayer`` plays that, as systemd would)."""
        with self._lock:
            vm = next((v for v in self._vms.values() if v.name == name), None)
            if vm is None or vm.state != "Succeeded":
                raise ValueError(f"only a running VM can be rebooted, not '{name}'")
            vm.reboots += 1

    def _events_wait(self) -> float:
        """How long this Scheduled Events call waits for the service to be on (0 once it is)."""
        with self._lock:
            self.events_asked.append(time.time())
            now = time.monotonic()
            if self._events_warm_up_s and not self._events_on_at:
                self._events_on_at = now + self._events_warm_up_s
            return max(self._events_on_at - now, 0.0)

"""The VM half of the ARM simulator: the VMs it keeps and its answers to ``Microsoft.Compute``.

``VmRoutes`` is mixed into ``ArmSimulator`` (ephemerid.testing.arm), which owns the state, the
lock and the faults; these are the answers to GET, PUT and DELETE of a VM, the list of a resource
group, and the long-running operations those start. ``Refusal`` scripts capacity and quota
refusals, and failures of the create's long-running operation (``on="operation"``); ``SimVm`` is
a VM as the simulator holds it (``power`` overrides the power state its provisioning state
implies, as ``fail_provisioning`` does). A PUT whose body the SDK's ``VirtualMachine`` model does
not accept key for key is refused (ephemerid.testing.vm_model), and so is one that would move
an existing VM to another region (``InvalidResourceLocation``). ``_stale`` GETs answer 404 for a
VM that exists, as a read of ARM's eventually consistent store can just after a create. What
Azure's platform does to a VM on request (``preempt``, ``evict``, ``reboot``, ``slow_events``,
``stale_reads``, ``fail_provisioning``) is in ephemerid.testing.arm_platform.

Each VM also has its own instance metadata service at ``imds_url(name)`` (on Azure it is
169.254.169.254 inside the VM): ``metadata/instance/compute`` (its resource id) and
``metadata/identity/oauth2/token``, which issues a token of the VM's identity. ARM lets that token
do what the jobs' custom role allows and nothing else: DELETE a VM of the VM's resource group.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ephemerid.testing.arm_platform import PlatformActions
from ephemerid.testing.vm_model import body_problems

Reply = tuple[int, Any, dict[str, str]]
SUBSCRIPTION = "00000000-0000-0000-0000-0000000000e1"
IMDS_PREFIX = "/imds/"
# Allocation failures surface on the async operation and leave a Failed VM; the rest on the PUT.
ASYNC_CODES = frozenset(
    {"AllocationFailed", "ZonalAllocationFailed", "OverconstrainedAllocationRequest"}
)


CAPACITY = ASYNC_CODES | {"SkuNotAvailable", "OverconstrainedZonalAllocationRequest"}


def arm_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass
class Refusal:
    """PUTs matching sku, region and spot (None: any) fail with ``code``, ``times`` times.

    ``on``: where the failure comes, ``put`` (a 409 answer) or ``operation`` (the create's
    long-running operation ends Failed and leaves a Failed VM); by default as Azure does it for
    ``code``: allocation failures on the operation, the rest on the PUT.
    """

    code: str
    sku: str | None = None
    region: str | None = None
    spot: bool | None = None
    nested: bool = False
    times: int | None = None
    on: str = ""

    @property
    def on_operation(self) -> bool:
        return self.on == "operation" or (not self.on and self.code in ASYNC_CODES)

    def matches(self, sku: str, region: str, spot: bool) -> bool:
        return (
            (self.times is None or self.times > 0)
            and self.sku in (None, sku)
            and self.region in (None, region)
            and self.spot in (None, spot)
        )

    def error(self, sku: str, region: str, spot: bool) -> dict[str, Any]:
        if self.code == "OperationNotAllowed":
            family = "Total Regional Low-priority vCPUs" if spot else f"{sku} Family vCPUs"
            message = (
                "Operation could not be completed as it results in exceeding approved "
                f"{family} quota. Additional details - Location: {region}, Current Limit: 0, "
                "Current Usage: 0, Additional Required: 4"
            )
        elif self.code in CAPACITY:
            kind = "spot" if spot else "on-demand"
            message = f"simulated {self.code}: no {kind} capacity for {sku} in {region}"
        else:
            message = f"simulated {self.code}: creating the {sku} VM in {region} failed; retry"
        inner = {"code": self.code, "message": message}
        if not self.nested:
            return inner
        return {
            "code": "ResourceOperationFailure",
            "message": "The resource operation completed with terminal state 'Failed'.",
            "details": [inner],
        }


@dataclass
class SimVm:
    """A VM as the simulator holds it; ``body`` is the PUT body exactly as the client sent it."""

    group: str
    name: str
    body: dict[str, Any]
    state: str = "Creating"  # Creating | Succeeded | Failed | Deleting
    until: float = 0.0  # when the current operation ends
    error: dict[str, Any] | None = None  # what a create ends with
    op: str = ""
    evict_at: float | None = None
    event: dict[str, Any] | None = None
    power: str | None = None  # the power state, when not the one ``state`` implies
    reboots: int = 0  # how many times the platform rebooted it (the VM player plays each)
    vm_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time_created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def props(self) -> dict[str, Any]:
        return dict(self.body.get("properties") or {})

    @property
    def sku(self) -> str:
        return str((self.props.get("hardwareProfile") or {}).get("vmSize", ""))

    @property
    def location(self) -> str:
        return str(self.body.get("location", ""))

    @property
    def spot(self) -> bool:
        return self.props.get("priority") == "Spot"

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.body.get("tags") or {})

    def custom_data(self) -> str:
        encoded = (self.props.get("osProfile") or {}).get("customData") or ""
        return base64.b64decode(encoded).decode("utf-8")


def _id(vm: SimVm) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{vm.group}/providers/"
        f"Microsoft.Compute/virtualMachines/{vm.name}"
    )


@dataclass
class _Op:
    kind: str
    location: str
    vm: SimVm
    until: float
    error: dict[str, Any] | None = None
    status: str = ""  # set when the operation ends early (Canceled)


class VmRoutes(PlatformActions):
    """The Microsoft.Compute answers; called by ``ArmSimulator._route`` under its lock."""

    lro: str
    page_size: int
    provision_s: float
    delete_s: float
    created: list[SimVm]
    _vms: dict[tuple[str, str], SimVm]
    _ops: dict[str, _Op]
    _refusals: list[Refusal]
    _stale: dict[str | None, int]  # VM name (None: any) -> GETs left that answer a stale 404

    vm_tokens: dict[str, tuple[str, str]]  # a token of a VM's identity -> (its group, its name)
    _lock: Any
    _incarnation: int

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def imds_url(self, name: str) -> str:
        """Where VM ``name`` finds its instance metadata service."""
        return f"{self.endpoint}{IMDS_PREFIX}{name}"

    def _imds(self, path: str, query: dict[str, str], headers: Any) -> Reply:
        if headers.get("Metadata", "").lower() != "true":
            return 400, {"error": "Bad request. Required metadata header not specified"}, {}
        name, _, what = path.removeprefix(IMDS_PREFIX).partition("/")
        vm = next((v for v in self._vms.values() if v.name == name), None)
        if vm is None:
            return 404, {"error": f"no VM '{name}' (gone VMs have no metadata service)"}, {}
        if what == "metadata/instance/compute":
            tags = [{"name": k, "value": v} for k, v in vm.tags.items()]
            compute = {"name": vm.name, "resourceGroupName": vm.group, "tagsList": tags}
            return 200, {**compute, "subscriptionId": SUBSCRIPTION, "resourceId": _id(vm)}, {}
        if what == "metadata/identity/oauth2/token" and query.get("resource"):
            token = f"vm-identity-{uuid.uuid4().hex}"
            self.vm_tokens[token] = (vm.group.lower(), vm.name)
            answer = {"access_token": token, "token_type": "Bearer", "expires_in": "3600"}
            return 200, {**answer, "resource": query["resource"]}, {}
        return 400, {"error": f"{path} is not simulated"}, {}

    def _view(self, vm: SimVm, instance_view: bool = False) -> dict[str, Any]:
        props = json.loads(json.dumps(vm.props))
        (props.get("osProfile") or {}).pop("customData", None)  # ARM never returns it
        props.update(provisioningState=vm.state, vmId=vm.vm_id, timeCreated=vm.time_created)
        if instance_view:
            implied = {"Creating": "starting", "Succeeded": "running", "Deleting": "stopping"}
            power = vm.power or implied.get(vm.state)
            failed = f"/{vm.error['code']}" if vm.state == "Failed" and vm.error else ""
            statuses = [{"code": f"ProvisioningState/{vm.state.lower()}{failed}"}]
            if power:
                statuses.append({"code": f"PowerState/{power}"})
            props["instanceView"] = {"statuses": statuses}
        view = {k: v for k, v in vm.body.items() if k != "properties"}
        view.update(
            id=_id(vm),
            name=vm.name,
            type="Microsoft.Compute/virtualMachines",
            properties=props,
        )
        return view

    def _list(self, group: str, path: str, query: dict[str, str]) -> Reply:
        vms = [v for (g, _), v in sorted(self._vms.items()) if g == group]
        skip = int(query.get("$skiptoken", "0"))
        page: dict[str, Any] = {"value": [self._view(v) for v in vms[skip : skip + self.page_size]]}
        if skip + self.page_size < len(vms):
            version = query["api-version"]
            page["nextLink"] = (
                f"{self.endpoint}{path}?api-version={version}&$skiptoken={skip + self.page_size}"
            )
        return 200, page, {}

    def _get(self, key: tuple[str, str], query: dict[str, str]) -> Reply:
        vm = self._vms.get(key)
        stale = next((n for n in (key[1], None) if self._stale.get(n, 0) > 0), "")
        if vm is not None and stale != "":
            self._stale[stale] -= 1
            vm = None  # this read reached a replica that has not seen the VM yet
        if vm is None:
            message = f"The Resource 'Microsoft.Compute/virtualMachines/{key[1]}' was not found."
            return 404, arm_error("ResourceNotFound", message), {}
        return 200, self._view(vm, query.get("$expand") == "instanceView"), {}

    def _put(self, key: tuple[str, str], group: str, name: str, raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
            props = body.get("properties") or {}
            sku = (props.get("hardwareProfile") or {}).get("vmSize")
            region = body.get("location")
            base64.b64decode((props.get("osProfile") or {}).get("customData") or "", validate=True)
        except (ValueError, AttributeError) as exc:
            return 400, arm_error("InvalidParameter", f"the VM body is not valid: {exc}"), {}
        if not sku or not region:
            message = "location and properties.hardwareProfile.vmSize are required"
            return 400, arm_error("InvalidParameter", message), {}
        problems = body_problems(body)
        if problems:
            message = f"The request content was invalid: {'; '.join(problems)}"
            return 400, arm_error("InvalidRequestContent", message), {}
        vm = self._vms.get(key)
        if vm is not None and vm.location.lower() != str(region).lower():
            message = (
                f"The resource '{name}' already exists in location '{vm.location}' in resource "
                f"group '{group}'. A resource with the same name cannot be created in location "
                f"'{region}'. Please select a new resource name."
            )
            return 400, arm_error("InvalidResourceLocation", message), {}
        if vm is not None and vm.state == "Deleting":
            message = (
                f"Operation 'PUT' is not allowed on VM '{name}' since it is marked for deletion."
            )
            return 409, arm_error("OperationNotAllowed", message), {}
        if vm is not None and vm.state != "Failed":  # a retried PUT: the VM as it is
            busy = vm.state == "Creating"
            return 200, self._view(vm), self._lro_headers(vm.op) if busy else {}
        spot = props.get("priority") == "Spot"
        refusal = next((r for r in self._refusals if r.matches(sku, region, spot)), None)
        error = refusal.error(sku, region, spot) if refusal else None
        if refusal is not None and refusal.times is not None:
            refusal.times -= 1
        if refusal is not None and not refusal.on_operation:
            return 409, {"error": error}, {}
        now = time.monotonic()
        vm = SimVm(group, name, body, until=now + self.provision_s, error=error)
        self._vms[key] = vm
        self.created.append(vm)
        vm.op = self._new_op("create", vm)
        return 201, self._view(vm), self._lro_headers(vm.op)

    def _delete(self, key: tuple[str, str], query: dict[str, str]) -> Reply:
        vm = self._vms.get(key)
        if vm is None:
            return 204, None, {}
        if vm.state != "Deleting":
            if vm.state == "Creating":  # the create loses to the delete
                self._ops[vm.op].status = "Canceled"
            vm.state, vm.until = "Deleting", time.monotonic() + self.delete_s
            vm.op = self._new_op("delete", vm)
        return 202, None, self._lro_headers(vm.op)

    def _new_op(self, kind: str, vm: SimVm) -> str:
        op = uuid.uuid4().hex
        self._ops[op] = _Op(kind, vm.location, vm, vm.until, vm.error if kind == "create" else None)
        return op

    def _lro_headers(self, op_id: str) -> dict[str, str]:
        op = self._ops[op_id]
        base = (
            f"{self.endpoint}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Compute/"
            f"locations/{op.location}/operations/{op_id}?api-version=2024-07-01"
        )
        headers = {}
        if self.lro in ("async", "both"):
            headers["Azure-AsyncOperation"] = base
        if self.lro in ("location", "both"):
            headers["Location"] = base + "&monitor=true"
        return headers

    def _operation(self, op_id: str, query: dict[str, str]) -> Reply:
        op = self._ops.get(op_id)
        if op is None:
            return 404, arm_error("NotFound", f"operation {op_id} is unknown"), {}
        status = op.status or (
            "InProgress" if time.monotonic() < op.until else "Failed" if op.error else "Succeeded"
        )
        if query.get("monitor") == "true":  # the Location protocol: 202 until done
            if status == "InProgress":
                return 202, None, self._lro_headers(op_id)
            if status != "Succeeded":
                error = op.error or {
                    "code": "OperationPreempted",
                    "message": "preempted by a delete",
                }
                return 409, {"error": error}, {}
            if op.kind == "create" and op.vm.state == "Succeeded":
                return 200, self._view(op.vm), {}
            return 204, None, {}
        body: dict[str, Any] = {"name": op_id, "status": status}
        if status == "Failed":
            body["error"] = op.error
        elif status == "Canceled":
            body["error"] = {"code": "OperationPreempted", "message": "preempted by a delete"}
        return 200, body, {}

"""The Container Apps half of the ARM simulator: the prediction service's app and its revisions.

``ContainerApps`` is ``sim.apps`` on ``ArmSimulator`` (ephemerid.testing.arm), which owns the
lock and the faults (429, 5xx, resets come before these answers) and routes every
``Microsoft.App`` path here. It answers what ``azure-mgmt-appcontainers``'s
``ContainerAppsAPIClient`` sends for blue/green: GET and PATCH (JSON merge patch, a long-running
operation) of ``.../providers/Microsoft.App/containerApps/{name}``, the list and GET of its
revisions, and POST ``.../revisions/{revision}/activate`` and ``/deactivate``.

What it keeps of Azure's rules, in ``activeRevisionsMode: Multiple``: a PATCH whose template
differs from the latest revision's makes a new revision ``<app>--<revisionSuffix>`` (a suffix
already taken is refused, 400); an ingress traffic entry with ``latestRevision: true`` follows the
newest revision; traffic weights must name existing, active revisions (or the one the PATCH
makes) and sum to 100 (400 otherwise); a revision that still receives traffic cannot be
deactivated (400). ``add_app`` makes an app as infra/modules/serving.bicep deploys it (one
revision, all traffic on the latest); ``SimApp.history`` keeps the weights after each PATCH.
Not simulated: replicas, scaling, the image pull, the Key Vault secret and the workload profile;
the error codes are the simulator's own where Azure's are not documented.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ephemerid.azure import clients
from ephemerid.testing.arm_vms import SUBSCRIPTION, Reply, arm_error

APPS_PROVIDER = "microsoft.app"
APP_TYPE = "Microsoft.App/containerApps"
MISSING = object()


@dataclass
class SimRevision:
    name: str
    template: dict[str, Any]
    active: bool = True
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


@dataclass
class SimApp:
    group: str
    name: str
    body: dict[str, Any]  # location, identity, properties (configuration, template, ...)
    revisions: dict[str, SimRevision] = field(default_factory=dict)
    latest: str = ""
    busy_until: float = 0.0
    history: list[dict[str, int]] = field(default_factory=list)  # the weights after each PATCH

    @property
    def props(self) -> dict[str, Any]:
        return dict(self.body["properties"])

    @property
    def traffic(self) -> list[dict[str, Any]]:
        return list(self.body["properties"]["configuration"]["ingress"].get("traffic") or [])

    def weights(self) -> dict[str, int]:
        """Revision name -> the weight it receives now (``latestRevision`` resolved)."""
        found: dict[str, int] = {}
        for entry in self.traffic:
            name = self.latest if entry.get("latestRevision") else entry.get("revisionName", "")
            found[name] = found.get(name, 0) + int(entry.get("weight") or 0)
        return found


class ContainerApps:
    """The Microsoft.App answers; ``route`` is called by ``ArmSimulator._route`` under its lock."""

    def __init__(self, endpoint: Callable[[], str], lock: Any, *, update_s: float = 0.05) -> None:
        self._endpoint, self._lock, self.update_s = endpoint, lock, update_s
        self.apps: dict[tuple[str, str], SimApp] = {}
        self._ops: dict[str, tuple[SimApp, float]] = {}
        self._refusals: list[tuple[str, str]] = []

    # -- scripting and reading ---------------------------------------------------------------

    def add_app(self, group: str, name: str, image: str, env: dict[str, str]) -> str:
        """An app as serving.bicep makes it (one revision, all traffic on the latest); its id."""
        variables: list[dict[str, str]] = [{"name": k, "value": v} for k, v in env.items()]
        variables.append({"name": "EPHEMERID_SERVING_KEYS", "secretRef": "serving-keys"})
        container = {"name": "serving", "image": image, "env": variables}
        ingress = {"external": True, "targetPort": 8080, "transport": "http"}
        ingress["traffic"] = [{"latestRevision": True, "weight": 100}]
        properties = {
            "configuration": {"activeRevisionsMode": "Multiple", "ingress": ingress},
            "template": {"containers": [container], "scale": {"minReplicas": 0}},
        }
        with self._lock:
            app = SimApp(group.lower(), name, {"location": "westus3", "properties": properties})
            self.apps[(group.lower(), name.lower())] = app
            self._new_revision(app, "initial")
            return _id(app)

    def refuse_next_patch(self, code: str, message: str) -> None:
        """Answer the next PATCH of any app 400 with ``code`` (a template ARM does not accept)."""
        with self._lock:
            self._refusals.append((code, message))

    def app(self, group: str, name: str) -> SimApp:
        with self._lock:
            return self.apps[(group.lower(), name.lower())]

    def active(self, group: str, name: str) -> dict[str, int]:
        """The active revisions of an app and the weight each receives."""
        app = self.app(group, name)
        with self._lock:
            weights = app.weights()
            return {r.name: weights.get(r.name, 0) for r in app.revisions.values() if r.active}

    # -- answering ---------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], raw: bytes) -> Reply:
        parts = [p.lower() for p in path.strip("/").split("/")]
        names = path.strip("/").split("/")
        if parts[2:5] == ["providers", APPS_PROVIDER, "locations"] and len(parts) == 8:
            return self._operation(names[7], query)
        if len(parts) < 8 or parts[4:7] != ["providers", APPS_PROVIDER, "containerapps"]:
            return 400, arm_error("UnsupportedBySimulator", f"{method} {path} is not simulated"), {}
        app = self.apps.get((parts[3], parts[7]))
        if app is None:
            message = f"The Resource '{APP_TYPE}/{names[7]}' under resource group '{names[3]}' "
            return 404, arm_error("ResourceNotFound", message + "was not found."), {}
        rest = (method, *parts[8:])
        if rest == ("GET",):
            return 200, self._view(app), {}
        if rest == ("PATCH",):
            return self._patch(app, raw)
        if rest == ("GET", "revisions"):
            return 200, {"value": [self._revision(app, r) for r in app.revisions.values()]}, {}
        revision = app.revisions.get(names[9]) if len(names) > 9 else None
        if revision is None:
            return 404, arm_error("ContainerAppRevisionNotFound", f"no revision {path}"), {}
        if rest[:2] == ("GET", "revisions") and len(rest) == 3:
            return 200, self._revision(app, revision), {}
        if method == "POST" and len(rest) == 4 and rest[3] in ("activate", "deactivate"):
            return self._activation(app, revision, rest[3] == "activate")
        return 400, arm_error("UnsupportedBySimulator", f"{method} {path} is not simulated"), {}

    def _patch(self, app: SimApp, raw: bytes) -> Reply:
        if self._refusals:
            return 400, arm_error(*self._refusals.pop(0)), {}
        try:
            patch = json.loads(raw)
        except ValueError as exc:
            return 400, arm_error("InvalidRequestContent", f"the body is not JSON: {exc}"), {}
        merged = _merge(copy.deepcopy(app.body), patch)
        template = (merged.get("properties") or {}).get("template")
        new_revision = template != app.revisions[app.latest].template
        suffix = (template or {}).get("revisionSuffix") or uuid.uuid4().hex[:7]
        revision_name = f"{app.name}--{suffix}"
        if new_revision and revision_name in app.revisions:
            message = f"revision suffix '{suffix}' is taken: revision {revision_name} exists"
            return 400, arm_error("ContainerAppRevisionSuffixTaken", message), {}
        problem = _traffic_problem(merged, app, revision_name if new_revision else "")
        if problem:
            return 400, arm_error("ContainerAppInvalidTraffic", problem), {}
        app.body = merged
        if new_revision:
            self._new_revision(app, suffix)
        app.history.append(app.weights())
        app.busy_until = time.monotonic() + self.update_s
        op = uuid.uuid4().hex
        self._ops[op] = (app, app.busy_until)
        return 202, None, self._lro_headers(app, op)

    def _activation(self, app: SimApp, revision: SimRevision, active: bool) -> Reply:
        if not active and app.weights().get(revision.name, 0) > 0:
            message = f"revision {revision.name} receives traffic: move its weight first"
            return 400, arm_error("ContainerAppRevisionInUse", message), {}
        revision.active = active
        return 200, None, {}

    def _new_revision(self, app: SimApp, suffix: str) -> None:
        template = copy.deepcopy(app.body["properties"]["template"])
        app.latest = f"{app.name}--{suffix}"
        app.revisions[app.latest] = SimRevision(app.latest, template)

    def _operation(self, op_id: str, query: dict[str, str]) -> Reply:
        found = self._ops.get(op_id)
        if found is None:
            return 404, arm_error("NotFound", f"operation {op_id} is unknown"), {}
        app, until = found
        done = time.monotonic() >= until
        if query.get("monitor") == "true":
            return (
                (200, self._view(app), {}) if done else (202, None, self._lro_headers(app, op_id))
            )
        return 200, {"name": op_id, "status": "Succeeded" if done else "InProgress"}, {}

    def _lro_headers(self, app: SimApp, op_id: str) -> dict[str, str]:
        base = (
            f"{self._endpoint()}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.App/locations/"
            f"{app.body.get('location')}/containerappOperationStatuses/{op_id}?api-version=2025-01-01"
        )
        return {"Azure-AsyncOperation": base, "Location": base + "&monitor=true"}

    def _view(self, app: SimApp) -> dict[str, Any]:
        props = copy.deepcopy(app.props)
        busy = time.monotonic() < app.busy_until
        props.update(
            provisioningState="InProgress" if busy else "Succeeded",
            latestRevisionName=app.latest,
            latestReadyRevisionName=app.latest,
        )
        view = {k: v for k, v in app.body.items() if k != "properties"}
        return {**view, "id": _id(app), "name": app.name, "type": APP_TYPE, "properties": props}

    def _revision(self, app: SimApp, revision: SimRevision) -> dict[str, Any]:
        props = {
            "createdTime": revision.created,
            "active": revision.active,
            "trafficWeight": app.weights().get(revision.name, 0),
            "template": copy.deepcopy(revision.template),
            "provisioningState": "Provisioned",
            "runningState": "Running" if revision.active else "Stopped",
            "replicas": 0,
        }
        rid = f"{_id(app)}/revisions/{revision.name}"
        return {
            "id": rid,
            "name": revision.name,
            "type": f"{APP_TYPE}/revisions",
            "properties": props,
        }


def _traffic_problem(body: dict[str, Any], app: SimApp, new_revision: str) -> str:
    traffic = body["properties"]["configuration"]["ingress"].get("traffic") or []
    known = {name for name, r in app.revisions.items() if r.active} | {new_revision} - {""}
    for entry in traffic:
        name = entry.get("revisionName")
        if not entry.get("latestRevision") and name not in known:
            return f"traffic names revision '{name}', which is not an active revision of the app"
        weight = entry.get("weight", 0)
        if not isinstance(weight, int) or not 0 <= weight <= 100:
            return f"traffic weight {weight!r} is not a whole number from 0 to 100"
    total = sum(int(e.get("weight") or 0) for e in traffic)
    return "" if total == 100 or not traffic else f"traffic weights sum to {total}, not 100"


def _merge(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7396): objects merge key by key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key, MISSING), value)
    return target


def _id(app: SimApp) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{app.group}/providers/{APP_TYPE}/{app.name}"
    )


def container_apps_client(
    endpoint: str, subscription_id: str = SUBSCRIPTION, **options: Any
) -> Any:
    """The real ``ContainerAppsAPIClient`` for the simulator at ``endpoint`` (loopback only)."""
    return clients.container_apps_client(subscription_id, endpoint, **options)

"""Blue/green for the prediction service's Container App: one revision per model version, and the
ingress traffic weights by revision (infra/modules/serving.bicep makes the app).

``ContainerAppDeployer(client, app_id).deploy(plan, image)`` brings the app to a ``SplitPlan``
(ephemerid.azure.split_plan) in named steps, each through the real ``ContainerAppsAPIClient``:

1. read the app (``NotFound`` naming it, and what to set, if it does not exist);
2. pin the traffic: an entry that follows the latest revision would hand a new revision its
   weight the moment it is made, so the first new revision's PATCH also writes it as the
   revision it means now;
3. make a revision ``<app>--v<version>`` for each version that has none: the app's template with
   ``EPHEMERID_SERVING_MODEL=name:version`` and ``EPHEMERID_SERVING_PIN=true`` (a revision serves
   one version; the split is ingress's) and the image given, else the one the app runs now;
   activate a planned revision that was deactivated;
4. set the weights by revision, in one PATCH;
5. deactivate every other active revision (they get no traffic now; replicas are released).

Each step is skipped when the app is already so: a second ``deploy`` of one plan writes nothing.
A revision keeps the image it was made with: asking for version 3 from another image is
``Conflict``. SDK errors go through ``ephemerid.azure.errors`` (429 and 5xx are retried by the
client first, then ``Unavailable``). ``ContainerAppSettings`` names the app the function app
deploys to (``EPHEMERID_SERVING_APP_ID``, set by infra/modules/app.bicep) and the alias it
follows (``EPHEMERID_SERVING_FOLLOW``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationError, field_validator

from ephemerid.azure import clients
from ephemerid.azure.errors import sdk_errors
from ephemerid.azure.split_plan import Share, SplitPlan
from ephemerid.errors import BadInput, Conflict, NotFound
from ephemerid.settings import EnvMapping, _explain, _Settings, _summary
from ephemerid.spec import ModelRef

# The prediction service's settings a revision sets (ephemerid.serving.settings.ServingSettings).
MODEL_SETTING = "EPHEMERID_SERVING_MODEL"
PIN_SETTING = "EPHEMERID_SERVING_PIN"
SPLIT_SETTING = "EPHEMERID_SERVING_SPLIT"
CONTAINER = "serving"  # the container's name in serving.bicep
ROLE = "Contributor on the container app (infra/modules/serving.bicep)"
APP_ID = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.App/containerApps/"
    r"([a-z0-9][a-z0-9-]{0,30}[a-z0-9]?)$",
    re.I,
)


class ContainerAppSettings(_Settings):
    """Where the function app deploys model versions to, when it does (enableServing)."""

    app_id: str = Field("", alias="EPHEMERID_SERVING_APP_ID")
    # name@alias: a job promoting a version under it redeploys the service (ephemerid.azure.follow)
    follow: str = Field("", alias="EPHEMERID_SERVING_FOLLOW")
    arm_endpoint: str = Field("", alias="EPHEMERID_ARM_ENDPOINT")  # the simulator, in tests

    @field_validator("follow")
    @classmethod
    def _an_alias(cls, value: str) -> str:
        if value and ModelRef.parse(value).alias is None:  # its ValueError names the form
            raise ValueError(f"'{value}' names a version: write name@alias (tabular@production)")
        return value

    def followed(self) -> ModelRef | None:
        return ModelRef.parse(self.follow) if self.follow and self.app_id else None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ContainerAppSettings:
        try:
            return cls(**EnvMapping(cls, env)())
        except ValidationError as exc:
            raise BadInput(_summary(list(_explain(cls, exc)))) from None


@dataclass(frozen=True)
class AppId:
    subscription: str
    group: str
    name: str

    @classmethod
    def parse(cls, text: str) -> AppId:
        match = APP_ID.match(text.strip())
        if match is None:
            raise BadInput(
                f"'{text[:200]}' is not a container app id: write /subscriptions/<id>/"
                "resourceGroups/<group>/providers/Microsoft.App/containerApps/<name> "
                "(azd's output EPHEMERID_SERVING_APP_ID)"
            )
        return cls(*match.groups())

    def __str__(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.group}/providers/"
            f"Microsoft.App/containerApps/{self.name}"
        )

    def revision(self, version: int) -> str:
        return f"{self.name}--v{version}"


@dataclass(frozen=True)
class Deployed:
    """What a deploy left: the weights by revision, and what it changed to get there."""

    app_id: str
    plan: str
    traffic: dict[str, int]
    created: tuple[str, ...] = ()
    activated: tuple[str, ...] = ()
    deactivated: tuple[str, ...] = ()
    traffic_changed: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.created or self.activated or self.deactivated or self.traffic_changed)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "changed": self.changed}


@dataclass
class _Progress:
    created: list[str] = field(default_factory=list)
    activated: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)
    traffic_changed: bool = False


class ContainerAppDeployer:
    def __init__(self, client: Any, app_id: AppId) -> None:
        self.client, self.app_id = client, app_id

    @classmethod
    def from_settings(cls, settings: ContainerAppSettings, **options: Any) -> ContainerAppDeployer:
        if not settings.app_id:
            raise BadInput(
                "no prediction service to deploy to: set EPHEMERID_SERVING_APP_ID to the "
                "container app's id (infra: enableServing=true; docs/serving-azure.md)"
            )
        app_id = AppId.parse(settings.app_id)
        client = clients.container_apps_client(
            app_id.subscription, settings.arm_endpoint, **options
        )
        return cls(client, app_id)

    def deploy(self, plan: SplitPlan, image: str = "") -> Deployed:
        done = _Progress()
        app = self.read_app()
        revisions = self.revisions()
        self.check_images(plan, image, revisions)  # before any write
        missing = [s for s in plan.shares if self.app_id.revision(s.version) not in revisions]
        pinned = _pinned(app) if missing and _follows_latest(app) else None
        for share in plan.shares:
            self.ensure_revision(app, plan.model, share, image, revisions, done, pinned)
            pinned = None if done.created else pinned  # the first new revision's PATCH pins
        weights = {self.app_id.revision(s.version): s.weight for s in plan.shares}
        wanted = [{"revisionName": name, "weight": weight} for name, weight in weights.items()]
        if _traffic(self.read_app()) != wanted:
            self.set_traffic(wanted, done)
        self.retire_others(set(weights), done)
        return Deployed(
            str(self.app_id),
            plan.describe(),
            weights,
            tuple(done.created),
            tuple(done.activated),
            tuple(done.deactivated),
            done.traffic_changed,
        )

    # -- the steps ------------------------------------------------------------------------------

    def read_app(self) -> dict[str, Any]:
        try:
            with sdk_errors(f"reading container app {self.app_id}", role=ROLE):
                return dict(
                    self.client.container_apps.get(self.app_id.group, self.app_id.name).as_dict()
                )
        except NotFound as exc:
            raise NotFound(
                f"container app '{self.app_id.name}' ({self.app_id}) does not exist: deploy the "
                "infra with enableServing=true, or set EPHEMERID_SERVING_APP_ID to azd's output "
                f"of that name ({exc})"
            ) from exc

    def revisions(self) -> dict[str, dict[str, Any]]:
        with sdk_errors(f"listing the revisions of {self.app_id}", role=ROLE):
            pages = self.client.container_apps_revisions.list_revisions(
                self.app_id.group, self.app_id.name
            )
            return {r.name: dict(r.as_dict()) for r in pages}

    def check_images(
        self, plan: SplitPlan, image: str, revisions: dict[str, dict[str, Any]]
    ) -> None:
        """A version's revision keeps the image it was made with: another one is a Conflict."""
        for share in plan.shares if image else ():
            name = self.app_id.revision(share.version)
            if name not in revisions:
                continue
            has = _container(_props(revisions[name]).get("template") or {}).get("image")
            if has != image:
                raise Conflict(
                    f"revision {name} serves {plan.model}:{share.version} from image '{has}', "
                    f"not '{image}': a version's revision keeps its image; deploy without an "
                    "image, or register the model again as a new version"
                )

    def ensure_revision(
        self,
        app: dict[str, Any],
        model: str,
        share: Share,
        image: str,
        revisions: dict[str, dict[str, Any]],
        done: _Progress,
        pinned: list[dict[str, Any]] | None = None,
    ) -> None:
        name = self.app_id.revision(share.version)
        revision = revisions.get(name)
        if revision is None:
            template = _template_for(app["properties"]["template"], model, share.version, image)
            body: dict[str, Any] = {"template": template}
            if pinned is not None:  # in the same PATCH: the new revision starts with no traffic
                body["configuration"] = {"ingress": {"traffic": pinned}}
            self._patch({"properties": body}, f"making revision {name}")
            done.created.append(name)
            return
        if not _props(revision).get("active"):
            with sdk_errors(f"activating revision {name} of {self.app_id}", role=ROLE):
                self.client.container_apps_revisions.activate_revision(
                    self.app_id.group, self.app_id.name, name
                )
            done.activated.append(name)

    def set_traffic(self, traffic: list[dict[str, Any]], done: _Progress) -> None:
        patch = {"properties": {"configuration": {"ingress": {"traffic": traffic}}}}
        self._patch(patch, f"setting the traffic weights of {self.app_id.name} to {traffic}")
        done.traffic_changed = True

    def retire_others(self, planned: set[str], done: _Progress) -> None:
        """Deactivate every active revision the plan does not name (it has no traffic now)."""
        for name, revision in self.revisions().items():
            if name in planned or not _props(revision).get("active"):
                continue
            with sdk_errors(f"deactivating revision {name} of {self.app_id}", role=ROLE):
                self.client.container_apps_revisions.deactivate_revision(
                    self.app_id.group, self.app_id.name, name
                )
            done.deactivated.append(name)

    def _patch(self, body: dict[str, Any], what: str) -> None:
        with sdk_errors(what, role=ROLE):
            poller = self.client.container_apps.begin_update(
                self.app_id.group, self.app_id.name, body
            )
            poller.result()


def _template_for(base: dict[str, Any], model: str, version: int, image: str) -> dict[str, Any]:
    """The app's template as the revision of ``model:version`` (pinned to it)."""
    template = copy.deepcopy(base)
    template["revisionSuffix"] = f"v{version}"
    container = _container(template)
    if image:
        container["image"] = image
    ours = {MODEL_SETTING, PIN_SETTING, SPLIT_SETTING}
    env = [e for e in container.get("env") or [] if e.get("name") not in ours]
    env += [
        {"name": MODEL_SETTING, "value": f"{model}:{version}"},
        {"name": PIN_SETTING, "value": "true"},
    ]
    container["env"] = env
    return template


def _container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template.get("containers") or []
    found: dict[str, Any] | None = next((c for c in containers if c.get("name") == CONTAINER), None)
    if found is None:
        names = [c.get("name") for c in containers]
        raise BadInput(
            f"the container app has no container '{CONTAINER}' (it has {names}): is it the "
            "prediction service that infra/modules/serving.bicep makes?"
        )
    return found  # the template's own: _template_for edits it in place


def _traffic(app: dict[str, Any], raw: bool = False) -> list[dict[str, Any]]:
    entries = ((app["properties"].get("configuration") or {}).get("ingress") or {}).get("traffic")
    if raw:
        return list(entries or [])
    return [
        {"revisionName": e.get("revisionName"), "weight": e.get("weight", 0)}
        for e in entries or []
        if not e.get("latestRevision")
    ] + [{"latest": e.get("weight", 0)} for e in entries or [] if e.get("latestRevision")]


def _pinned(app: dict[str, Any]) -> list[dict[str, Any]]:
    """The app's traffic with "the latest revision" written as the revision that is now."""
    latest = app["properties"].get("latestRevisionName", "")
    return [
        {"revisionName": latest if e.get("latestRevision") else e.get("revisionName"),
         "weight": e.get("weight", 0)}
        for e in _traffic(app, raw=True)
    ]  # fmt: skip


def _follows_latest(app: dict[str, Any]) -> bool:
    return any(e.get("latestRevision") for e in _traffic(app, raw=True))


def _props(resource: dict[str, Any]) -> dict[str, Any]:
    return dict(resource.get("properties") or {})

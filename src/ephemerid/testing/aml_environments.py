"""Environment versions in the Azure ML simulator: what ``MLClient.environments`` sends.

- ``get(name, version=…)``: GET ``…/workspaces/{ws}/environments/{name}/versions/{version}``,
  the version with its ``properties``; 404 ``ResourceNotFound``.
- ``create_or_update(Environment(name, version, image, conda_file))`` (no build context, so
  nothing is uploaded): PUT on that path, 201 with the version; the same content again 200 (its
  description and tags may change), other content 409 ``UserError`` "Environment … with version
  … is already registered and cannot be changed", as Azure ML answers: a version is immutable.

A job whose ``environmentId`` names a workspace environment version that is not registered is
refused (400). Not simulated: image builds (``Preparing`` only takes ``preparing_s``), archiving,
labels (``@latest``), the environment container resource and registries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

Reply = tuple[int, Any, dict[str, str]]
# what defines a version; the rest (description, tags, properties) may change
CONTENT = ("image", "condaFile", "osType", "build", "inferenceConfig")
_VERSION_ID = re.compile(
    r"/workspaces/(?P<ws>[^/]+)/environments/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$",
    re.IGNORECASE,
)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _content(props: dict[str, Any]) -> dict[str, Any]:
    content = {k: props.get(k) for k in CONTENT}
    if isinstance(content["condaFile"], str):  # the same YAML however it is laid out
        content["condaFile"] = yaml.safe_load(content["condaFile"])
    return content


@dataclass
class EnvironmentVersion:
    name: str
    version: str
    props: dict[str, Any]
    puts: int = 1  # PUTs that created or updated it


@dataclass
class AmlEnvironments:
    """One workspace's environment versions, keyed by (name lower-cased, version)."""

    subscription: str
    group: str
    workspace: str
    versions: dict[tuple[str, str], EnvironmentVersion] = field(default_factory=dict)

    def register(self, name: str, version: str, **props: Any) -> None:
        """A version registered before the test (by infra, say): ``image=…, condaFile=…``."""
        self.versions[(name.lower(), version)] = EnvironmentVersion(name, version, props)

    def has(self, environment_id: str) -> bool | None:
        """Whether the ARM id names a version registered here (None: not one of this workspace)."""
        match = _VERSION_ID.search(environment_id)
        if match is None or match["ws"].lower() != self.workspace:
            return None
        return (match["name"].lower(), match["version"]) in self.versions

    def route(self, method: str, name: str, version: str, raw: bytes) -> Reply:
        key = (name.lower(), version)
        found = self.versions.get(key)
        if method == "GET":
            if found is None:
                message = f"Environment {name} with version {version} was not found"
                return 404, _error("ResourceNotFound", message), {}
            return 200, self._view(found), {}
        try:
            props = dict(json.loads(raw)["properties"])
        except (ValueError, KeyError, TypeError) as exc:
            return 400, _error("UserError", f"the environment body is not valid: {exc}"), {}
        if found is None:
            self.versions[key] = found = EnvironmentVersion(name, version, props)
            return 201, self._view(found), {}
        if _content(found.props) != _content(props):
            message = (
                f"Environment {name} with version {version} is already registered and cannot "
                "be changed."
            )
            return 409, _error("UserError", message), {}
        found.props.update({k: v for k, v in props.items() if k not in CONTENT})
        found.puts += 1
        return 200, self._view(found), {}

    def _view(self, env: EnvironmentVersion) -> dict[str, Any]:
        props = {
            **env.props,
            "environmentType": "UserCreated",
            "provisioningState": "Succeeded",
        }
        return {
            "id": f"/subscriptions/{self.subscription}/resourceGroups/{self.group}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{self.workspace}/environments/"
            f"{env.name}/versions/{env.version}",
            "name": env.version,
            "type": "Microsoft.MachineLearningServices/workspaces/environments/versions",
            "properties": props,
        }

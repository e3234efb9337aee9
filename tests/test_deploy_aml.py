"""The Azure ML part of the Bicep, checked against Azure's own types (no Bicep compiler runs here).

Two things a real deployment refuses and a string check would not see:

- a property the resource type does not have at the API version used (``systemDatastoresAuthMode``
  is not in the workspace type at 2024-04-01 or 2024-10-01). The property names are read from
  azure-ai-ml's own REST models (``arm_ml_service``, generated from Azure's REST spec), and the API
  version is pinned to one whose spec has them;
- a cluster whose nodes have no public IP, in a subnet, without a private endpoint of the
  workspace in that VNet (and the private DNS zones that make the nodes resolve to it): Azure ML
  refuses to create such a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.ai.ml._restclient.arm_ml_service import models

from test_deploy_modules import closing, top_level_keys, without_comments

INFRA = Path(__file__).resolve().parents[1] / "infra"

# Azure ML's resource types at this version have every property aml.bicep sets: Azure's REST spec
# (azure-rest-api-specs, machinelearningservices stable/2025-12-01) and azure-ai-ml 1.35's
# arm_ml_service (generated for 2025-12-01) declare WorkspaceProperties.systemDatastoresAuthMode;
# stable/2024-10-01 does not (read 2026-12-02).
ML_API = "2025-12-01"
# The REST model of each Azure ML resource's `properties` (and of objects nested in it).
MODELS = {
    "Microsoft.MachineLearningServices/workspaces": {
        "properties": models.WorkspaceProperties,
    },
    "Microsoft.MachineLearningServices/workspaces/computes": {
        "properties": models.AmlCompute,
        "properties.properties": models.AmlComputeProperties,
        "properties.properties.scaleSettings": models.ScaleSettings,
    },
    "Microsoft.MachineLearningServices/workspaces/datastores": {
        "properties": models.AzureBlobDatastore,
    },
}
# The zones a workspace private endpoint registers its names in (Azure's public cloud).
WORKSPACE_ZONES = {"privatelink.api.azureml.ms", "privatelink.notebooks.azure.net"}


@dataclass(frozen=True)
class Resource:
    symbol: str
    type: str
    version: str
    body: str  # the object literal, or the [for ...: {...}] loop around it

    @property
    def loop(self) -> str | None:
        """The array a ``[for x in array: ...]`` resource loops over."""
        match = re.match(r"\[for\s+(?:\w+|\(\w+,\s*\w+\))\s+in\s+(\w+)\s*:", self.body)
        return match.group(1) if match else None


def resources(text: str) -> Iterator[Resource]:
    for match in re.finditer(r"^resource (\w+) '([^'@]+)@([^']+)'[^=]*=\s*", text, re.M):
        opened = match.end()
        if text.startswith("if", opened):
            opened = text.index("{", opened)
        body = text[opened : closing(text, opened) + 1]
        yield Resource(match.group(1), match.group(2), match.group(3), body)


def member(body: str, path: str) -> str | None:
    """The object literal at ``path`` (``a.b``) inside ``body``, or None."""
    for key in path.split("."):
        start = body.index("{")
        found = None
        depth, quoted = 0, False
        for i in range(start, len(body)):
            char = body[i]
            if char == "'":
                quoted = not quoted
            elif quoted:
                continue
            elif char in "{[(":
                depth += 1
            elif char in "}])":
                depth -= 1
            elif depth == 1 and body[i - 1] in "{\n ,\t":
                match = re.match(rf"{key}\s*:\s*\{{", body[i:])
                if match and not re.match(r"\w", body[i - 1]):
                    found = i + match.end() - 1
                    break
        if found is None:
            return None
        body = body[found : closing(body, found) + 1]
    return body


def rest_names(model: type) -> set[str]:
    model()  # the SDK fills in its field table on first use
    return {field._rest_name for field in model._attr_to_rest_field.values()}


def array_strings(text: str, name: str) -> set[str]:
    match = re.search(rf"^var {name} = \[", text, re.M)
    if not match:
        return set()
    opened = match.end() - 1
    return set(re.findall(r"'([^']+)'", text[opened : closing(text, opened) + 1]))


def aml() -> str:
    return without_comments((INFRA / "modules" / "aml.bicep").read_text())


def main() -> str:
    return without_comments((INFRA / "main.bicep").read_text())


# -- the types and their API version --------------------------------------------------------------


def type_problems(text: str) -> list[str]:
    found = []
    ml = [r for r in resources(text) if r.type.startswith("Microsoft.MachineLearningServices/")]
    if not any(r.type == "Microsoft.MachineLearningServices/workspaces" for r in ml):
        found.append("no Azure ML workspace found: the parser lost it")
    for resource in ml:
        if resource.version != ML_API:
            found.append(
                f"{resource.symbol}: {resource.type}@{resource.version}, not @{ML_API} "
                "(the version whose types were checked)"
            )
        for path, model in MODELS.get(resource.type, {}).items():
            block = member(resource.body, path)
            assert block, f"{resource.symbol} has no {path}"
            for unknown in sorted(top_level_keys(block) - rest_names(model)):
                found.append(f"{resource.symbol}: {path}.{unknown} is not in {model.__name__}")
    return found


def test_every_azure_ml_resource_uses_the_api_version_and_property_names_azure_declares() -> None:
    assert type_problems(aml()) == []


def test_the_workspace_sets_system_datastores_auth_mode_to_a_value_azure_knows() -> None:
    [workspace] = [
        r for r in resources(aml()) if r.type == "Microsoft.MachineLearningServices/workspaces"
    ]
    properties = member(workspace.body, "properties") or ""
    value = re.search(r"systemDatastoresAuthMode:\s*'([^']+)'", properties)

    assert value, "the workspace does not set systemDatastoresAuthMode"
    assert value.group(1) in {m.value for m in models.SystemDatastoresAuthMode}
    assert value.group(1) == "Identity"  # the datastores are identity-based: no account key


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            (
                "workspaces@2025-12-01' = {\n  name: workspaceName",
                "workspaces@2024-04-01' = {\n  name: workspaceName",
            ),
            "workspaces@2024-04-01, not @2025-12-01",
        ),
        (
            ("systemDatastoresAuthMode:", "systemDatastoreAuthMode:"),
            "properties.systemDatastoreAuthMode is not in WorkspaceProperties",
        ),
        (
            ("enableNodePublicIp: false", "enableNodePublicIP: false"),
            "properties.properties.enableNodePublicIP is not in AmlComputeProperties",
        ),
        (
            ("nodeIdleTimeBeforeScaleDown:", "idleTimeBeforeScaleDown:"),
            "scaleSettings.idleTimeBeforeScaleDown is not in ScaleSettings",
        ),
    ],
)
def test_a_wrong_api_version_or_property_name_turns_the_type_check_red(
    mutation: tuple[str, str], expected: str
) -> None:
    old, new = mutation
    text = aml()
    assert old in text

    found = type_problems(text.replace(old, new, 1))

    assert any(expected in problem for problem in found), found


# -- the network a cluster without public IPs needs ---------------------------------------------


def network_problems(text: str, main_text: str) -> list[str]:
    """What Azure ML refuses (or leaves unusable) for a no-public-IP cluster in a subnet."""
    found: list[str] = []
    every = list(resources(text))
    of_type = {t: [r for r in every if r.type == t] for t in {r.type for r in every}}
    [workspace] = of_type["Microsoft.MachineLearningServices/workspaces"]
    clusters = [
        c
        for c in of_type.get("Microsoft.MachineLearningServices/workspaces/computes", [])
        if re.search(r"enableNodePublicIp:\s*false", c.body) and "subnet:" in c.body
    ]
    if not clusters:
        return found
    subnet = re.compile(r"subnet:\s*\{\s*id:\s*(\S+)\s*\}")
    subnets = {m.group(1) for c in clusters if (m := subnet.search(c.body))}

    endpoints = [
        e
        for e in of_type.get("Microsoft.Network/privateEndpoints", [])
        if re.search(rf"privateLinkServiceId:\s*{workspace.symbol}\.id\b", e.body)
        and re.search(r"groupIds:\s*\[\s*'amlworkspace'\s*\]", e.body)
    ]
    if not endpoints:
        return [*found, "no private endpoint of the workspace with groupIds ['amlworkspace']"]
    [endpoint] = endpoints
    if not any(
        re.search(rf"subnet:\s*\{{\s*id:\s*{re.escape(s)}\s*\}}", endpoint.body) for s in subnets
    ):
        found.append(f"the workspace endpoint is not in the cluster's subnet {sorted(subnets)}")

    zones = of_type.get("Microsoft.Network/privateDnsZones", [])
    names: set[str] = set()
    for zone in zones:
        named = re.search(r"name:\s*'([^']+)'", zone.body)
        names |= (
            array_strings(text, zone.loop) if zone.loop else {named.group(1)} if named else set()
        )
    for missing in sorted(WORKSPACE_ZONES - names):
        found.append(f"no private DNS zone {missing}")
    links = of_type.get("Microsoft.Network/privateDnsZones/virtualNetworkLinks", [])
    for zone in zones:
        linked = [
            link
            for link in links
            if re.search(rf"parent:\s*{zone.symbol}\b", link.body)
            and re.search(r"virtualNetwork:\s*\{\s*id:\s*vnetId\s*\}", link.body)
            and link.loop == zone.loop
        ]
        if not linked:
            found.append(f"private DNS zone {zone.symbol} is not linked to the jobs VNet (vnetId)")
    groups = [
        g
        for g in of_type.get("Microsoft.Network/privateEndpoints/privateDnsZoneGroups", [])
        if re.search(rf"parent:\s*{endpoint.symbol}\b", g.body)
    ]
    for zone in zones:
        if not any(re.search(rf"\b{zone.symbol}(\[\w+\])?\.id\b", g.body) for g in groups):
            found.append(f"the workspace endpoint registers no names in {zone.symbol}")

    for cluster in clusters:
        waits = re.search(r"dependsOn:\s*\[([^\]]*)\]", cluster.body)
        after = set(re.findall(r"\w+", waits.group(1))) if waits else set()
        if not after & {endpoint.symbol, *(g.symbol for g in groups)}:
            found.append(f"cluster {cluster.symbol} is not made after the workspace endpoint")
        if not after & {link.symbol for link in links}:
            found.append(f"cluster {cluster.symbol} is not made after the VNet links")
    if not re.search(r"\bvnetId:\s*compute\.outputs\.vnetId\b", main_text):
        found.append("main.bicep does not pass the jobs VNet (vnetId) to the aml module")
    if not re.search(r"natGateway:\s*jobsNatGateway\s*\|\|\s*enableAzureMl\b", main_text):
        found.append("the jobs subnet can lose its outbound path while Azure ML nodes need it")
    return found


def test_a_cluster_without_public_ips_gets_the_workspace_endpoint_dns_and_outbound_it_needs() -> (
    None
):
    text = aml()

    assert re.search(r"enableNodePublicIp:\s*false", text)  # what makes the endpoint required
    assert network_problems(text, main()) == []


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (
            ("groupIds: [ 'amlworkspace' ]", "groupIds: [ 'workspace' ]"),
            "no private endpoint of the workspace",
        ),
        (
            ("privateLinkServiceId: workspace.id", "privateLinkServiceId: vault.id"),
            "no private endpoint of the workspace",
        ),
        (
            ("  'privatelink.notebooks.azure.net'\n", ""),
            "no private DNS zone privatelink.notebooks.azure.net",
        ),
        (
            ("virtualNetwork: { id: vnetId }", "virtualNetwork: { id: subnetId }"),
            "is not linked to the jobs VNet",
        ),
        (
            ("privateDnsZoneId: privateDnsZones[i].id", "privateDnsZoneId: ''"),
            "registers no names in privateDnsZones",
        ),
        (
            ("dependsOn: [ workspaceEndpointDns, privateDnsLinks ]", ""),
            "is not made after the workspace endpoint",
        ),
        (
            (
                "dependsOn: [ workspaceEndpointDns, privateDnsLinks ]",
                "dependsOn: [ workspaceEndpointDns ]",
            ),
            "is not made after the VNet links",
        ),
    ],
)
def test_a_missing_endpoint_zone_link_or_ordering_turns_the_network_check_red(
    mutation: tuple[str, str], expected: str
) -> None:
    old, new = mutation
    text = aml()
    assert old in text

    found = network_problems(text.replace(old, new, 1), main())

    assert any(expected in problem for problem in found), found


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (("    vnetId: compute.outputs.vnetId\n", ""), "does not pass the jobs VNet"),
        (
            ("natGateway: jobsNatGateway || enableAzureMl", "natGateway: jobsNatGateway"),
            "outbound path",
        ),
    ],
)
def test_main_without_the_vnet_or_the_nat_for_azure_ml_turns_the_network_check_red(
    mutation: tuple[str, str], expected: str
) -> None:
    old, new = mutation
    text = main()
    assert old in text

    found = network_problems(aml(), text.replace(old, new, 1))

    assert any(expected in problem for problem in found), found

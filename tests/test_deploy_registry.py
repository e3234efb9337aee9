"""The optional container registry (``enableRegistry``) against what azure-vm's image jobs need.

A job VM pulls ``environment.image`` with its identity (``ephemerid.envs.registry``), so the
infra must: create the registry only when asked, with no admin user (no password exists); grant
the VMs' identity AcrPull on that registry and nothing more; tell the app its login server
(``EPHEMERID_VM_REGISTRY``, the name the code refuses image jobs without) derived from the same
name the registry is created with; and keep the jobs' NAT gateway, since VMs reach the registry's
public endpoint. ``problems`` checks the Bicep text; each mutation below must turn it red.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ephemerid.envs.registry import ENV_REGISTRY
from ephemerid.settings import AzureVmSettings
from test_deploy_modules import closing, without_comments

INFRA = Path(__file__).resolve().parents[1] / "infra"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"  # Azure's built-in AcrPull role


def read(name: str) -> str:
    return without_comments((INFRA / name).read_text())


def resource(text: str, kind: str) -> tuple[str, str] | None:
    """(symbol, body) of the first resource of ``kind`` (``Microsoft.X/y``), or None."""
    match = re.search(rf"^resource (\w+) '{re.escape(kind)}@[^']+'[^=]*=\s*", text, re.M)
    if match is None:
        return None
    opened = text.index("{", match.end())
    return match.group(1), text[opened : closing(text, opened) + 1]


def module_call(main: str, path: str) -> str:
    match = re.search(rf"^module \w+ '{re.escape(path)}' = (if \((\w+)\) )?", main, re.M)
    if match is None:
        return ""
    opened = main.index("{", match.end())
    return match.group(0) + main[opened : closing(main, opened) + 1]


def problems(main: str, registry: str, app: str, roles: dict[str, str]) -> list[str]:
    found = []
    if not re.search(r"^param enableRegistry bool = false$", main, re.M):
        found.append("main.bicep: no 'param enableRegistry bool = false' (off by default)")
    call = module_call(main, "modules/registry.bicep")
    if not call.startswith("module registry 'modules/registry.bicep' = if (enableRegistry)"):
        found.append("main.bicep: the registry module is not called only if enableRegistry")
    if (
        "registryName: registryName" not in call
        or "vmIdentityName: identities.outputs." not in call
    ):
        found.append("main.bicep: the registry is not named registryName for the VMs' identity")
    name = re.search(r"^var registryName = enableRegistry \? 'cr\$\{token\}' : ''$", main, re.M)
    server = r"^var vmRegistry = enableRegistry \? '\$\{registryName\}\$\{environment\(\)"
    server += r"\.suffixes\.acrLoginServer\}' : ''$"
    if name is None or not re.search(server, main, re.M):
        found.append("main.bicep: the login server the app is told is not the registry's")
    if "vmRegistry: vmRegistry" not in main:
        found.append("main.bicep: the app module is not given vmRegistry")
    if "natGateway: jobsNatGateway || enableAzureMl || enableRegistry" not in main:
        found.append("main.bicep: job VMs lose their way out to the registry (NAT gateway)")
    if f"{{ name: '{ENV_REGISTRY}', value: vmRegistry }}" not in app:
        found.append(f"app.bicep: the app setting {ENV_REGISTRY} does not name the registry")
    acr = resource(registry, "Microsoft.ContainerRegistry/registries")
    if acr is None or "name: registryName" not in acr[1]:
        found.append("registry.bicep: no Microsoft.ContainerRegistry/registries named registryName")
    elif "adminUserEnabled: false" not in acr[1]:
        found.append("registry.bicep: the registry has an admin user (a password)")
    grant = resource(registry, "Microsoft.Authorization/roleAssignments")
    symbol = acr[0] if acr else "registry"
    if grant is None:
        found.append("registry.bicep: the VMs' identity is granted nothing on the registry")
    else:
        body = grant[1]
        if not re.search(rf"\n\s*scope: {symbol}\n", body):
            found.append("registry.bicep: the grant is not scoped to the registry alone")
        if "principalId: vmIdentity.properties.principalId" not in body:
            found.append("registry.bicep: the grant is not to the VMs' identity")
        granted = re.search(
            r"roleDefinitionId: [^\n]*'Microsoft\.Authorization/roleDefinitions', roles\.(\w+)\)",
            body,
        )
        if granted is None or granted.group(1) != "acrPull" or roles.get("acrPull") != ACR_PULL:
            found.append("registry.bicep: the grant is not AcrPull")
    return found


def texts() -> tuple[str, str, str, dict[str, str]]:
    roles = json.loads((INFRA / "roles.json").read_text())
    return read("main.bicep"), read("modules/registry.bicep"), read("modules/app.bicep"), roles


def test_the_registry_is_optional_pull_only_for_the_vms_and_named_to_the_app() -> None:
    assert problems(*texts()) == []
    assert AzureVmSettings.setting("registry") == ENV_REGISTRY  # what the code reads


MUTATIONS = {
    "on by default": (
        "main",
        "param enableRegistry bool = false",
        "param enableRegistry bool = true",
    ),
    "always created": ("main", "= if (enableRegistry) {", "= {"),
    "an admin user": ("registry", "adminUserEnabled: false", "adminUserEnabled: true"),
    "a wider grant": (
        "registry",
        "roleDefinitions', roles.acrPull)",
        "roleDefinitions', roles.owner)",
    ),
    "no scope": ("registry", "  scope: registry\n", ""),
    "another setting": ("app", "value: vmRegistry }", "value: '' }"),
    "no NAT": ("main", " || enableRegistry\n", "\n"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_mutated_registry_turns_the_check_red(mutation: str) -> None:
    main, registry, app, roles = texts()
    where, old, new = MUTATIONS[mutation]
    files = {"main": main, "registry": registry, "app": app}
    assert old in files[where], f"the mutation '{mutation}' no longer applies"
    files[where] = files[where].replace(old, new, 1)

    assert problems(files["main"], files["registry"], files["app"], roles) != []

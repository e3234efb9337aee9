"""The deployment (azure.yaml, infra/*.bicep, the postdeploy hooks) against the code it deploys.

No Bicep compiler, azd or Azure runs here, so these tests check the contract instead: what the
code reads, names and does is what the Bicep sets, creates and allows. Each list of "what the
code needs" is derived from the code itself (the functions that ``function_app.py`` registers,
the settings modules, the SDKs the package imports), so a change on either side that the other
does not follow fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import yaml

from ephemerid import names
from ephemerid.compute import ADAPTERS
from ephemerid.functions import APP_SETTING_DEFAULTS, handlers_from_settings, register
from ephemerid.functions.handlers import JOBS_QUEUE
from ephemerid.settings import PREFIX, AzureMlSettings, AzureVmSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
SRC = ROOT / "src" / "ephemerid"

# Azure's built-in role definition ids (the same in every tenant), by the names roles.json uses.
BUILT_IN_ROLES = {
    "storageBlobDataOwner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "storageBlobDataContributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "storageQueueDataContributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "storageTableDataContributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "serviceBusDataReceiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "serviceBusDataSender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "monitoringMetricsPublisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "virtualMachineContributor": "9980e02c-c2be-4d73-94e8-173b1dc7cf3c",
    "networkContributor": "4d97b98b-1d4f-4787-a291-c67834d212e7",
    "managedIdentityOperator": "f1a07417-d97a-45cb-824c-7a7467783830",
    "azureMlDataScientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
    "acrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "storageBlobDataReader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "keyVaultSecretsUser": "4633458b-17de-408a-b874-0445c86b69e6",
    "contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
}
# What the code does -> the roles (any one of each set) its identity needs for it.
NEEDS = {
    "azure.storage.blob": [{"storageBlobDataOwner", "storageBlobDataContributor"}],
    "azure.data.tables": [{"storageTableDataContributor"}],
    "azure.storage.queue": [{"storageQueueDataContributor"}],
    "azure.mgmt.compute": [
        {"virtualMachineContributor"},
        {"networkContributor"},
        {"managedIdentityOperator"},
    ],
    "azure.ai.ml": [{"azureMlDataScientist"}],  # jobs; the runner environment
    "azure.mgmt.appcontainers": [{"contributor"}],  # the prediction service's revisions, weights
    "blobTrigger": [{"storageBlobDataOwner"}],  # the host's blob receipts and leases
    "queueTrigger": [{"storageQueueDataContributor"}],
    "serviceBusTrigger": [{"serviceBusDataReceiver"}],
}
# Suffixes an identity-based connection setting takes, by the trigger that uses it.
CONNECTION_SUFFIXES = {
    "blobTrigger": ["credential", "clientId", "blobServiceUri", "queueServiceUri"],
    "queueTrigger": ["credential", "clientId", "queueServiceUri"],
    "serviceBusTrigger": ["credential", "clientId", "fullyQualifiedNamespace"],
}
HOST_STORAGE = [
    f"AzureWebJobsStorage__{s}"
    for s in ("credential", "clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri")
]


# -- reading the code ---------------------------------------------------------------------------


@cache
def bindings() -> list[tuple[str, dict[str, Any]]]:
    """(function name, binding) for every binding of the functions function_app.py registers."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, handlers_from_settings)
    return [
        (f.get_function_name(), b.get_dict_repr())
        for f in app.get_functions()
        for b in f.get_bindings()
    ]


def settings_the_bindings_name() -> set[str]:
    """Connection settings (identity-based form) and %NAME% placeholders of every trigger."""
    needed = set()
    for _, binding in bindings():
        if binding.get("connection"):
            suffixes = CONNECTION_SUFFIXES[binding["type"]]
            needed |= {f"{binding['connection']}__{s}" for s in suffixes}
        for value in (binding.get("path"), binding.get("queueName")):
            needed |= set(re.findall(r"%(\w+)%", value or ""))
    return needed


def settings_the_code_knows() -> set[str]:
    """Every EPHEMERID_* name in the package's source, and each Settings field's name."""
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    known = set(re.findall(r"\b(EPHEMERID_[A-Za-z_]+)\b", text))
    known |= {f.alias for f in Settings.model_fields.values() if f.alias}
    connections = {b["connection"] for _, b in bindings() if b.get("connection")}
    suffixes = {s for options in CONNECTION_SUFFIXES.values() for s in options}
    known |= {f"{c}__{s}" for c in connections for s in suffixes | {"tableServiceUri"}}
    return known


def sdks_the_package_uses() -> set[str]:
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    return {sdk for sdk in NEEDS if "." in sdk and re.search(rf"\b{re.escape(sdk)}\b", text)}


# -- reading the Bicep -----------------------------------------------------------------------------


def bicep(name: str) -> str:
    """A Bicep file without its // comments (none of ours has // inside a string but URLs)."""
    text = (INFRA / name).read_text()
    return re.sub(r"(?<!:)//.*", "", text)


def all_bicep() -> Iterator[tuple[str, str]]:
    for path in sorted(INFRA.rglob("*.bicep")):
        yield path.relative_to(INFRA).as_posix(), bicep(path.relative_to(INFRA).as_posix())


def block(text: str, start: int) -> str:
    """From ``start`` to the bracket that closes the first one opened after it."""
    opened = re.compile(r"[{\[]").search(text, start)
    assert opened, text[start : start + 80]
    depth = 0
    for i in range(opened.start(), len(text)):
        depth += 1 if text[i] in "{[" else -1 if text[i] in "}]" else 0
        if depth == 0:
            return text[start : i + 1]
    raise AssertionError("unbalanced brackets")


def app_settings() -> dict[str, str]:
    text = bicep("modules/app.bicep")
    settings = block(text, text.index("appSettings:"))
    pairs = re.findall(r"\{\s*name:\s*'([^']+)'\s*,\s*value:\s*(.+?)\s*\}\n", settings)
    names_ = [n for n, _ in pairs]
    assert len(names_) == len(set(names_)), "an app setting is set twice"
    return dict(pairs)


PUBLIC_IP = "Microsoft.Network/publicIPAddresses@"


def resources(text: str) -> Iterator[tuple[str, str, str]]:
    """(symbolic name, type@version, body) of every resource declared in ``text``."""
    for match in re.finditer(r"^resource (\w+) '([^']+)'[^=]*= ", text, re.M):
        yield match.group(1), match.group(2), block(text, match.end())


def bicep_vars(text: str) -> dict[str, str]:
    return dict(re.findall(r"^var (\w+) = (.+)$", text, re.M))


def role_assignments() -> list[dict[str, Any]]:
    """Every roleAssignments resource: its file, principal and the role names it grants."""
    found = []
    for file, text in all_bicep():
        variables = bicep_vars(text)
        pattern = r"resource \w+ 'Microsoft\.Authorization/roleAssignments@[^']+' = "
        for match in re.finditer(pattern, text):
            body = block(text, match.end())
            granted = re.search(r"roleDefinitionId:[^\n]*", body)
            source = granted.group(0) if granted else ""
            loop = re.match(r"\[for (\w+) in (.+?):", body)
            if loop and re.search(rf"\b{loop.group(1)}\)", source):  # the role is the loop's
                listed = loop.group(2).strip()
                source = (
                    block(text, text.index(f"var {listed} =")) if listed in variables else listed
                )
            principal = re.search(r"principalId:\s*(\S+)", body)
            found.append(
                {
                    "file": file,
                    "principal": principal.group(1) if principal else "",
                    "roles": set(re.findall(r"roles\.(\w+)", source)),
                    "scope": (re.search(r"\n\s*scope:\s*(\S+)", body) or [None, ""])[1],
                }
            )
    return found


def granted_to(principal_word: str) -> set[str]:
    return {
        role
        for a in role_assignments()
        if principal_word.lower() in a["principal"].lower()
        for role in a["roles"]
    }


# -- azure.yaml ---------------------------------------------------------------------------------


def test_azure_yaml_names_a_python_function_service_and_hooks_that_exist() -> None:
    doc = yaml.safe_load((ROOT / "azure.yaml").read_text())

    [(service, spec)] = doc["services"].items()
    assert (spec["language"], spec["host"], spec["project"]) == ("python", "function", ".")
    assert f"'azd-service-name': '{service}'" in bicep("modules/app.bicep")
    for platform in ("posix", "windows"):
        hook = doc["hooks"]["postdeploy"][platform]
        assert (ROOT / hook["run"]).is_file(), hook["run"]


# -- settings ----------------------------------------------------------------------------------


def test_every_setting_the_functions_and_backends_read_is_set_in_bicep() -> None:
    needed = settings_the_bindings_name() | set(APP_SETTING_DEFAULTS) | set(HOST_STORAGE)
    needed |= set(AzureVmSettings.required_settings()) | {"EPHEMERID_VM_IDENTITY_CLIENT_ID"}
    needed |= set(AzureMlSettings.required_settings()) | {"EPHEMERID_AML_LOW_PRIORITY"}
    aml_cluster = {"identity_client_id", "node_sku", "datastore", "idle_s"}  # the bill and jobs
    needed |= {AzureMlSettings.setting(k) for k in aml_cluster}
    needed |= {"EPHEMERID_STORE", "EPHEMERID_ARTIFACTS", "EPHEMERID_HOME"}

    missing = sorted(needed - set(app_settings()))

    assert missing == [], (
        f"the code reads these, the function app's Bicep does not set them: {missing}"
    )


def test_every_ephemerid_setting_in_bicep_is_one_the_code_reads() -> None:
    ours = {n for n in app_settings() if n.startswith(PREFIX)}

    unknown = sorted(ours - settings_the_code_knows())

    assert unknown == [], f"set in Bicep, read by no code (a typo or a leftover?): {unknown}"


def test_settings_are_identity_based_and_point_at_what_the_code_expects() -> None:
    settings = app_settings()
    variables = bicep_vars(bicep("modules/app.bicep"))

    assert not any(re.search(r"AccountKey|SharedAccessKey|listKeys", v) for v in settings.values())
    assert not any(n in settings for n in ("AzureWebJobsStorage", "EPHEMERID_STORAGE"))
    credentials = {v for n, v in settings.items() if n.endswith("__credential")}
    assert credentials == {"'managedidentity'"}
    assert settings["EPHEMERID_STORE"] == "'table://${jobsTable}'"
    assert variables["jobsTable"] == f"'{names.JOBS_TABLE}'"
    assert settings["EPHEMERID_ARTIFACTS"] == "'az://'"
    assert settings["EPHEMERID_BACKEND"].strip("'") in ADAPTERS
    assert (
        settings["EPHEMERID_HOME"].strip("'").startswith("/tmp/")
    )  # the app's folder is read-only


def test_the_azure_ml_settings_name_the_workspace_cluster_and_datastore_made() -> None:
    main, aml, settings = bicep("main.bicep"), bicep("modules/aml.bicep"), app_settings()
    variables = bicep_vars(main)
    module = block(main, main.index("module aml "))

    assert variables["amlWorkspace"] == "enableAzureMl ? 'mlw-${token}' : ''"
    assert "workspaceName: amlWorkspace" in module
    assert settings["EPHEMERID_AML_WORKSPACE"] == "amlWorkspace"
    assert "clusterName: amlCluster" in module
    assert "amlCluster: enableAzureMl ? amlCluster : ''" in main
    datastore = block(aml, aml.index("resource runsDatastore "))
    assert f"name: {settings['EPHEMERID_AML_DATASTORE']}" in datastore
    assert (
        settings["EPHEMERID_AML_DATASTORE"]
        == f"'{AzureMlSettings.model_fields['datastore'].default}'"
    )
    assert f"containerName: '{names.RUNS}'" in datastore
    assert "credentialsType: 'None'" in datastore  # identity-based: no key


def test_the_cluster_scales_to_zero_and_the_bill_counts_the_idle_time_it_is_given() -> None:
    main, aml, settings = bicep("main.bicep"), bicep("modules/aml.bicep"), app_settings()
    cluster = block(aml, aml.index("resource cluster "))
    module = block(main, main.index("module aml "))
    default = re.search(r"param amlIdleSeconds int = (\d+)", main)

    assert "minNodeCount: 0" in cluster
    assert "nodeIdleTimeBeforeScaleDown: 'PT${idleSeconds}S'" in cluster
    assert "idleSeconds: amlIdleSeconds" in module
    assert settings["EPHEMERID_AML_IDLE_S"] == "string(amlIdleSeconds)"
    assert default and float(default.group(1)) == AzureMlSettings.model_fields["idle_s"].default
    assert "vmPriority: lowPriority ? 'LowPriority' : 'Dedicated'" in cluster
    assert settings["EPHEMERID_AML_LOW_PRIORITY"] == "string(amlLowPriority)"
    assert settings["EPHEMERID_AML_SKU"] == "amlClusterSku"
    assert "clusterSku: amlClusterSku" in module


# -- names ---------------------------------------------------------------------------------------


def test_containers_queues_and_table_are_the_ones_the_code_names() -> None:
    variables = bicep_vars(bicep("modules/app.bicep"))
    settings = app_settings()

    assert variables["incomingContainer"] == f"'{names.INCOMING}'"
    assert variables["runsContainer"] == f"'{names.RUNS}'"
    assert variables["modelsContainer"] == f"'{names.MODELS}'"
    assert variables["jobContainers"] == "[ incomingContainer, runsContainer, modelsContainer ]"
    assert len(names.CONTAINERS) == 3
    assert variables["jobsQueue"] == f"'{JOBS_QUEUE}'"
    assert "[ jobsQueue, '${jobsQueue}-poison' ]" in bicep("modules/app.bicep")
    for setting, variable in (
        ("EPHEMERID_INCOMING_CONTAINER", "incomingContainer"),
        ("EPHEMERID_RUNS_CONTAINER", "runsContainer"),
        ("EPHEMERID_JOBS_QUEUE", "jobsQueue"),
    ):
        assert settings[setting] == variable


def test_the_service_bus_queue_dead_letters_and_its_lock_outlives_no_renewal() -> None:
    text = bicep("modules/app.bicep")
    queue = block(text, text.index("resource serviceBusQueue"))
    host = json.loads((ROOT / "host.json").read_text())

    lock = re.search(r"lockDuration: 'PT(\d+)M'", queue)
    assert lock and 1 <= int(lock.group(1)) <= 5  # Service Bus allows at most 5 minutes
    assert re.search(r"maxDeliveryCount: \d+", queue)
    assert "deadLetteringOnMessageExpiration: true" in queue
    renewal = host["extensions"]["serviceBus"]["maxAutoLockRenewalDuration"]
    assert _minutes(renewal) >= _minutes(host["functionTimeout"]) > int(lock.group(1))


def _minutes(span: str) -> float:
    h, m, s = (float(x) for x in span.split(":"))
    return h * 60 + m + s / 60


# -- roles -----------------------------------------------------------------------------------------


def test_the_role_names_are_azures_built_in_roles() -> None:
    assert json.loads((INFRA / "roles.json").read_text()) == BUILT_IN_ROLES


def test_every_azure_operation_the_code_performs_has_a_role_for_the_function_identity() -> None:
    uses = sdks_the_package_uses() | {b["type"] for _, b in bindings()}
    granted = granted_to("functionIdentity") | granted_to("functionPrincipalId")

    missing = [
        f"{use}: one of {sorted(any_of)}"
        for use in sorted(uses & set(NEEDS))
        for any_of in NEEDS[use]
        if not any_of & granted
    ]

    assert {"azure.storage.blob", "azure.data.tables", "azure.mgmt.compute"} <= uses
    assert missing == [], f"no role allows: {missing}"


def test_nothing_is_granted_subscription_wide_and_the_vms_only_get_the_job_containers() -> None:
    """...and pulling from the registry made for them (tests/test_deploy_registry.py)."""
    assignments = role_assignments()

    assert assignments, "no role assignments found: the parser lost them"
    assert not [a for a in assignments if a["file"] == "main.bicep"]  # the subscription scope
    vm = [a for a in assignments if "vmIdentity" in a["principal"]]
    pull = [a for a in vm if a["file"] == "modules/registry.bicep"]
    assert [(a["roles"], a["scope"]) for a in pull] == [({"acrPull"}, "registry")]
    vm = [a for a in vm if a not in pull]
    assert vm and all(a["roles"] == {"storageBlobDataContributor"} for a in vm)
    assert all(a["scope"].startswith("jobContainer[") for a in vm)
    assert "Owner" not in " ".join(
        r for a in assignments for r in a["roles"] - {"storageBlobDataOwner"}
    )


def test_the_vms_identity_may_delete_job_vms_in_their_group_and_nothing_else() -> None:
    """The VM's own deadline (ephemerid/imds.py DELETEs the VM through ARM with its identity)
    needs that right; a custom role grants exactly it, on the jobs' resource group only."""
    text = bicep("modules/compute.bicep")
    [(name, _, role)] = [r for r in resources(text) if "/roleDefinitions@" in r[1]]
    [granted] = [
        body
        for _, kind, body in resources(text)
        if "/roleAssignments@" in kind and "principalId: vmPrincipalId" in body
    ]
    source = (SRC / "imds.py").read_text()

    assert 'method="DELETE"' in source and "Microsoft\\.Compute/virtualMachines/" in source
    assert set(re.findall(r"'(Microsoft\.[\w./]+)'", block(role, role.index("actions:")))) == {
        "Microsoft.Compute/virtualMachines/delete",
        "Microsoft.Network/networkInterfaces/delete",  # the VM's delete takes its NIC and disk
        "Microsoft.Compute/disks/delete",
    }
    assert "notActions: []" in role and "dataActions" not in role
    assert re.search(r"assignableScopes:\s*\[\s*resourceGroup\(\)\.id\s*\]", role)
    assert f"roleDefinitionId: {name}.id" in granted and "scope:" not in granted
    assert "vmPrincipalId: identities.outputs.vmPrincipalId" in bicep("main.bicep")
    assert "output vmPrincipalId string = vmIdentity.properties.principalId" in bicep(
        "modules/identities.bicep"
    )


# -- what must never be there --------------------------------------------------------------------


@pytest.mark.parametrize("file", [f for f, _ in all_bicep()])
def test_no_shared_keys_no_local_auth_and_no_public_ip_on_job_compute(file: str) -> None:
    text = bicep(file)

    assert not re.search(r"allowSharedKeyAccess:\s*true", text)
    assert not re.search(r"disableLocalAuth:\s*false", text, re.I)
    assert "publicIPAddressConfiguration" not in text
    assert "enableNodePublicIp: true" not in text
    public_ips = [n for n, kind, _ in resources(text) if kind.startswith(PUBLIC_IP)]
    for ip in public_ips:
        users = [kind for _, kind, body in resources(text) if re.search(rf"\b{ip}\.id\b", body)]
        assert users and all(k.startswith("Microsoft.Network/natGateways@") for k in users), (
            f"public IP {ip} is used by {users}: only the jobs' NAT gateway may have one"
        )


def test_storage_service_bus_and_app_insights_refuse_keys() -> None:
    text = bicep("modules/app.bicep")

    assert "allowSharedKeyAccess: false" in block(text, text.index("resource storage "))
    assert "disableLocalAuth: true" in block(text, text.index("resource serviceBus "))
    assert "DisableLocalAuth: true" in block(text, text.index("resource appInsights "))
    nsg = bicep("modules/compute.bicep")
    assert re.search(r"direction: 'Inbound'\s+access: 'Deny'", nsg)


# -- the postdeploy hooks ---------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["postdeploy.sh", "postdeploy.ps1"])
def test_the_hooks_subscribe_every_blob_trigger_to_the_containers_it_watches(hook: str) -> None:
    text = (INFRA / "hooks" / hook).read_text()
    blob_functions = {name: b for name, b in bindings() if b["type"] == "blobTrigger"}
    containers = {
        "%EPHEMERID_INCOMING_CONTAINER%": names.INCOMING,
        "%EPHEMERID_RUNS_CONTAINER%": names.RUNS,
    }

    for name, binding in blob_functions.items():
        placeholder, _, rest = binding["path"].partition("/")
        prefix = f"/blobServices/default/containers/{containers[placeholder]}/"
        line = next(
            line for line in text.splitlines() if re.match(rf"\s*[Ss]ubscribe\b.*\b{name}\b", line)
        )
        assert prefix in line, line
        if not rest.startswith("{") or "/" in rest:  # a fixed file name ends the path
            assert f"/{rest.rsplit('/', 1)[-1]}" in line, line
    assert "Microsoft.Storage.BlobCreated" in text
    assert "functionName=Host.Functions." in text
    assert not re.search(r"echo .*\$key|Write-Host .*\$key", text)  # the key is never printed

"""The prediction service's deployment (``enableServing``, infra/modules/serving.bicep) against the
code it runs and the code that deploys versions to it.

No Bicep compiler or Azure runs here (docs/serving-azure.md says what that leaves unchecked), so
this reads the Bicep text: the container's settings are exactly ``ServingSettings``' names (less
those that have no meaning in a container, each with its reason) plus the bucket's; it scales to
zero on a serverless GPU profile, with HTTP scaling; revisions are Multiple (blue/green by
weight); the image is pulled by identity (no admin user, no registry password); the keys are a
Key Vault reference, never a plain value; only /healthz is probed (the one route without a key)
and ingress is HTTPS only; each identity holds one role on one resource; and the function app is
told the id of the app ``ephemerid.azure.container_app`` deploys to. ``problems`` checks the
text; each mutation below must turn it red.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ephemerid import names
from ephemerid.azure import container_app
from ephemerid.azure.container_app import ContainerAppSettings
from ephemerid.settings import Settings, StorageSettings
from test_deploy_modules import closing, without_comments

INFRA = Path(__file__).resolve().parents[1] / "infra"
ROLES = json.loads((INFRA / "roles.json").read_text())
# ServingSettings fields a container in Azure does not set, and why (each must still be a field).
NOT_IN_AZURE = {
    "EPHEMERID_SERVING_KEYS_FILE": "the keys come from the Key Vault secret, not a keys file",
    "EPHEMERID_SERVING_CODE": "the code is the training job's snapshot in the bucket",
    "EPHEMERID_SERVING_ENTRYPOINT": "predict.py, the batch harness's contract",
}
ENV = re.compile(r"\{ name: '(EPHEMERID_\w+)', (value|secretRef): (.+?) \}")


def read(name: str) -> str:
    return without_comments((INFRA / name).read_text())


def resource(text: str, symbol: str) -> str:
    """The body of resource ``symbol`` (``{...}``), or ''."""
    match = re.search(rf"^resource {symbol} '[^']+'[^=]*=\s*(if \([^)]*\) )?", text, re.M)
    if match is None:
        return ""
    opened = text.index("{", match.end())
    return text[opened : closing(text, opened) + 1]


def container_env(serving: str) -> dict[str, tuple[str, str]]:
    """Setting name -> (value or secretRef, the Bicep expression) of the serving container."""
    found = ENV.findall(resource(serving, "app"))
    assert len({n for n, _, _ in found}) == len(found), "a setting is set twice"
    return {name: (kind, expression) for name, kind, expression in found}


def serving_aliases() -> set[str]:
    """Every ServingSettings setting name (ephemerid.serving: fails here until it is merged)."""
    from ephemerid.serving.settings import ServingSettings

    return {f.alias for f in ServingSettings.model_fields.values() if f.alias}


def settings_problems(serving: str, ours: set[str]) -> list[str]:
    env = set(container_env(serving))
    bucket = {f.alias for f in StorageSettings.model_fields.values() if f.alias}
    bucket |= {f.alias for f in Settings.model_fields.values() if f.alias}
    found = [
        f"NOT_IN_AZURE names '{n}', no ServingSettings field" for n in NOT_IN_AZURE if n not in ours
    ]
    found += [f"serving.bicep does not set {n}" for n in sorted(ours - set(NOT_IN_AZURE) - env)]
    unknown = sorted(env - ours - bucket)
    found += [f"serving.bicep sets {n}, which no settings class reads" for n in unknown]
    found += [
        f"serving.bicep sets {n}, which has no meaning there" for n in env & set(NOT_IN_AZURE)
    ]
    for name in (
        container_app.MODEL_SETTING,
        container_app.PIN_SETTING,
        container_app.SPLIT_SETTING,
    ):
        if name not in ours:
            found.append(f"ephemerid.azure.container_app sets {name}, no ServingSettings field")
    return found


def infra_problems(main: str, serving: str, app: str) -> list[str]:
    found: list[str] = []
    body, env = resource(serving, "app"), container_env(serving)

    def need(ok: object, problem: str) -> None:
        if not ok:
            found.append(problem)

    need(re.search(r"^param enableServing bool = false$", main, re.M), "serving is on by default")
    need(
        re.search(
            r"^module serving 'modules/serving\.bicep' = if \(enableServing\) \{", main, re.M
        ),
        "main.bicep: the serving module is not called only if enableServing",
    )
    # scale to zero on a serverless GPU, HTTP scaling, blue/green by revision
    need(
        re.search(r"\n\s*minReplicas: 0\n", body), "the app does not scale to zero (minReplicas 0)"
    )
    need(
        re.search(r"rules: \[\s*\{ name: '\w+', http: \{ metadata: \{ concurrentRequests:", body),
        "the app has no HTTP (concurrent requests) scale rule",
    )
    need("activeRevisionsMode: 'Multiple'" in body, "revisions are not Multiple (no blue/green)")
    gpu = re.search(r"^param gpuProfileType string = '(Consumption-GPU-[\w-]+)'$", serving, re.M)
    profile = re.search(r"\{ name: (\w+), workloadProfileType: gpuProfileType \}", serving)
    need(gpu and profile, "the environment has no serverless GPU (Consumption-GPU-*) profile")
    need(
        profile and f"workloadProfileName: {profile.group(1)}\n" in body,
        "the app does not run on the GPU profile",
    )
    need(
        "{ name: 'Consumption', workloadProfileType: 'Consumption' }" in serving,
        "the environment lacks the Consumption profile",
    )
    # ingress: HTTPS only, to the service's port; only /healthz goes without a key
    ingress = re.search(r"ingress: \{[^}]*\}", body)
    text = ingress.group(0) if ingress else ""
    need("external: true" in text and "allowInsecure: false" in text, "ingress is not HTTPS only")
    need("transport: 'http'" in text and "targetPort: port" in text, "ingress misses the port")
    need(
        re.search(r"^var port = 8080$", serving, re.M)
        and env.get("EPHEMERID_SERVING_PORT") == ("value", "string(port)"),
        "the service's port is not the ingress's",
    )
    need(env.get("EPHEMERID_SERVING_HOST") == ("value", "'0.0.0.0'"), "the service binds loopback")
    need("additionalPortMappings" not in body, "another port is exposed")
    need(
        set(re.findall(r"path: '([^']*)'", serving)) == {"/healthz"},
        "a probe calls a route other than /healthz (every other route needs a key)",
    )
    need(
        len(re.findall(r"\{ type: '(Startup|Readiness|Liveness)', httpGet: health", body)) == 3,
        "the app lacks its startup, readiness and liveness probes",
    )
    limits = {"failureThreshold": 10, "periodSeconds": 240}  # Container Apps' probe limits
    need(all(int(v) <= limits[k] for k, v in re.findall(r"(failureThreshold|periodSeconds): (\d+)",
         body)), f"a probe is past Container Apps' limits {limits}")  # fmt: skip
    # keys: a Key Vault reference by identity, never a value
    need(
        env.get("EPHEMERID_SERVING_KEYS") == ("secretRef", "keysSecretName"),
        "EPHEMERID_SERVING_KEYS is not a secret reference",
    )
    secrets = re.search(r"secrets: \[(.*?)\n      \]", body, re.S)
    need(
        secrets
        and "keyVaultUrl: keysSecret.properties.secretUri, identity: servingIdentity.id"
        in secrets.group(1)
        and "value:" not in secrets.group(1),
        "the keys secret is not a Key Vault reference read by the service's identity",
    )
    need(
        re.search(r"@secure\(\)\n@minLength\(1\)\nparam keys string", serving),
        "the keys parameter is not @secure",
    )
    need(re.search(r"@secure\(\)\nparam servingKeys string", main), "servingKeys is not @secure")
    # the image: pulled by the service's identity
    need(
        "registries: [ { server: registryServer, identity: servingIdentity.id } ]" in body,
        "the image is not pulled with the service's identity",
    )
    need(
        not re.search(r"passwordSecretRef|username:|adminUserEnabled: true", serving),
        "a registry password or admin user",
    )
    need("identity: {\n    type: 'UserAssigned'" in body, "the app has no user-assigned identity")
    # logs: the project's workspace, through Azure Monitor (no workspace key)
    need(
        "appLogsConfiguration: { destination: 'azure-monitor' }" in serving
        and "workspaceId: logsWorkspaceId" in resource(serving, "environmentLogs")
        and "logsWorkspaceId: app.outputs.logsWorkspaceId" in main
        and "output logsWorkspaceId string = logs.id" in app,
        "logs do not go to the project's Log Analytics workspace",
    )
    need(not re.search(r"listKeys|sharedKey", serving), "a workspace or account key is read")
    found += grant_problems(serving)
    # the function app deploys versions to this app (ephemerid.azure.container_app)
    setting = ContainerAppSettings.model_fields["app_id"].alias
    need(
        f"{{ name: '{setting}', value: servingAppId }}" in app, f"app.bicep does not set {setting}"
    )
    need(
        "servingAppId: servingAppId" in main and "appName: servingAppName" in main,
        "main.bicep: the app id the function app is told is not the app made",
    )
    need("name: appName\n" in body, "the container app is not named appName")
    need(
        re.search(
            r"^var servingAppId = enableServing \? '\$\{appGroup\.id\}/providers/"
            r"Microsoft\.App/containerApps/\$\{servingAppName\}' : ''$",
            main,
            re.M,
        ),
        "main.bicep: servingAppId is not the container app's resource id",
    )
    need(f"name: '{container_app.CONTAINER}'" in body, "the container is not the one deploys edit")
    follow = ContainerAppSettings.model_fields["follow"].alias
    need(f"{{ name: '{follow}', value: servingFollow }}" in app
         and "servingFollow: enableServing && contains(servingModel, '@') ? servingModel : ''"
         in main and "model: servingModel\n" in main,
         f"{follow} is not the alias the first revision follows")  # fmt: skip
    return found


def grant_problems(serving: str) -> list[str]:
    """Each grant: one role, to one principal, on one resource."""
    expected = {
        "servingPull": ("acrPull", "servingIdentity.properties.principalId", "registry"),
        "servingModels": (
            "storageBlobDataReader",
            "servingIdentity.properties.principalId",
            "models",
        ),
        "servingKeys": (
            "keyVaultSecretsUser",
            "servingIdentity.properties.principalId",
            "keysSecret",
        ),
        "functionDeploys": ("contributor", "functionPrincipalId", "app"),
    }
    found = []
    grants = re.findall(
        r"^resource (\w+) 'Microsoft\.Authorization/roleAssignments@", serving, re.M
    )
    if sorted(grants) != sorted(expected):
        found.append(f"serving.bicep grants {sorted(grants)}, not {sorted(expected)}")
    for symbol, (role, principal, scope) in expected.items():
        body = resource(serving, symbol)
        granted = re.findall(r"roleDefinitions', roles\.(\w+)\)", body)
        if granted != [role] or role not in ROLES:
            found.append(f"{symbol} grants {granted}, not {role}")
        if f"principalId: {principal}\n" not in body:
            found.append(f"{symbol} is not granted to {principal}")
        if not re.search(rf"\n\s*scope: {scope}\n", body):
            found.append(f"{symbol} is not scoped to {scope} alone")
    models = resource(serving, "models")
    if (
        f"var modelsContainer = '{names.MODELS}'" not in serving
        or "name: modelsContainer" not in models
    ):
        found.append(f"the reader's container is not the models container '{names.MODELS}'")
    return found


def texts() -> tuple[str, str, str]:
    return read("main.bicep"), read("modules/serving.bicep"), read("modules/app.bicep")


def test_the_serving_infra_scales_to_zero_on_a_gpu_with_identity_pull_and_vaulted_keys() -> None:
    assert infra_problems(*texts()) == []


def test_the_container_sets_every_serving_setting_and_nothing_unknown() -> None:
    assert settings_problems(texts()[1], serving_aliases()) == []


MUTATIONS = {
    "on by default": (
        "main",
        "param enableServing bool = false",
        "param enableServing bool = true",
    ),
    "always deployed": ("main", "= if (enableServing) {", "= {"),
    "min one replica": ("serving", "minReplicas: 0\n", "minReplicas: 1\n"),
    "no HTTP scale rule": (
        "serving",
        "http: { metadata: { concurrentRequests:",
        "tcp: { metadata: { concurrentRequests:",
    ),
    "single revision": (
        "serving",
        "activeRevisionsMode: 'Multiple'",
        "activeRevisionsMode: 'Single'",
    ),
    "a CPU profile": ("serving", "= 'Consumption-GPU-NC8as-T4'", "= 'D4'"),
    "off the GPU": (
        "serving",
        "workloadProfileName: gpuProfileName",
        "workloadProfileName: 'Consumption'",
    ),
    "plain http": ("serving", "allowInsecure: false", "allowInsecure: true"),
    "keys in plain env": (
        "serving",
        "'EPHEMERID_SERVING_KEYS', secretRef: keysSecretName",
        "'EPHEMERID_SERVING_KEYS', value: keys",
    ),
    "a keys value secret": (
        "serving",
        "keyVaultUrl: keysSecret.properties.secretUri",
        "value: keys",
    ),
    "keys not secure": (
        "serving",
        "@secure()\n@minLength(1)\nparam keys",
        "@minLength(1)\nparam keys",
    ),
    "a registry password": (
        "serving",
        "{ server: registryServer, identity: servingIdentity.id }",
        "{ server: registryServer, username: 'admin', passwordSecretRef: 'acr' }",
    ),
    "a probe on predict": ("serving", "path: '/healthz'", "path: '/v1/models/m:predict'"),
    "a wider pull": ("serving", "scope: registry\n", "scope: resourceGroup()\n"),
    "a writer on models": (
        "serving",
        "roleDefinitions', roles.storageBlobDataReader)",
        "roleDefinitions', roles.storageBlobDataContributor)",
    ),
    "the whole account": ("serving", "  scope: models\n", "  scope: storage\n"),
    "a workspace key": (
        "serving",
        "{ destination: 'azure-monitor' }",
        "{ destination: 'log-analytics', logAnalyticsConfiguration: "
        "{ sharedKey: logs.listKeys().primarySharedKey } }",
    ),
    "loopback only": ("serving", "value: '0.0.0.0'", "value: '127.0.0.1'"),
    "another app id": ("app", "value: servingAppId }", "value: '' }"),
    "no deploy right": ("serving", "scope: app\n", "scope: managedEnvironment\n"),
    "a probe past the limit": ("serving", "failureThreshold: 10 }", "failureThreshold: 60 }"),
    "follows another": ("main", "? servingModel : ''\n", "? 'tabular@staging' : ''\n"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_mutated_serving_infra_turns_the_check_red(mutation: str) -> None:
    files = dict(zip(("main", "serving", "app"), texts(), strict=True))
    where, old, new = MUTATIONS[mutation]
    assert old in files[where], f"the mutation '{mutation}' no longer applies"
    files[where] = files[where].replace(old, new, 1)

    assert infra_problems(files["main"], files["serving"], files["app"]) != []


SETTINGS_MUTATIONS = {
    "a setting dropped": ("{ name: 'EPHEMERID_SERVING_POLL_S', value: '10' }\n", ""),
    "a typo": ("'EPHEMERID_SERVING_MAX_ROWS'", "'EPHEMERID_SERVING_MAX_ROW'"),
    "a keys file": (
        "{ name: 'EPHEMERID_SERVING_PIN',",
        "{ name: 'EPHEMERID_SERVING_KEYS_FILE', value: '/k' }\n{ name: 'EPHEMERID_SERVING_PIN',",
    ),
}


@pytest.mark.parametrize("mutation", sorted(SETTINGS_MUTATIONS))
def test_a_mutated_container_setting_turns_the_check_red(mutation: str) -> None:
    serving = texts()[1]
    old, new = SETTINGS_MUTATIONS[mutation]
    assert old in serving, f"the mutation '{mutation}' no longer applies"

    assert settings_problems(serving.replace(old, new, 1), serving_aliases()) != []


def test_a_serving_setting_the_bicep_does_not_know_turns_the_check_red() -> None:
    assert settings_problems(texts()[1], serving_aliases() | {"EPHEMERID_SERVING_NEW"}) != []

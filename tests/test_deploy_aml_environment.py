"""The runner's Azure ML environment in the Bicep: none, so the app registers its own by content.

An environment version cannot change once registered. A version the infra registers (``:1``) and
names in ``EPHEMERID_AML_ENVIRONMENT`` is used as is by the app, so an edit of its conda file
breaks the next provision. Instead the infra registers no environment, sets none of the settings
that replace the app's own definition, and gives the function app a role on the workspace that
may write environment versions: the app registers ``ephemerid-runner:<digest>`` on first use
(``ephemerid.compute.aml_environment``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ephemerid.settings import AzureMlSettings
from test_deploy_aml import resources
from test_deploy_modules import without_comments

INFRA = Path(__file__).resolve().parents[1] / "infra"
ML = "Microsoft.MachineLearningServices/workspaces"

# Built-in roles by the names roles.json uses: (Actions, NotActions), as Azure defines them.
# AzureML Data Scientist (f6c7c914-8db3-469d-8ca1-694a8f32e121), definition updated 2023-05-31
# (read 2026-12-02): every action in a workspace but writing or deleting computes, listing keys,
# and changing or deleting the workspace (and hubs and feature stores).
ROLE_PERMISSIONS = {
    "azureMlDataScientist": (
        [f"{ML}/*/read", f"{ML}/*/action", f"{ML}/*/delete", f"{ML}/*/write"],
        [
            f"{ML}/delete",
            f"{ML}/write",
            f"{ML}/computes/*/write",
            f"{ML}/computes/*/delete",
            f"{ML}/computes/listKeys/action",
            f"{ML}/listKeys/action",
            f"{ML}/hubs/write",
            f"{ML}/hubs/delete",
            f"{ML}/featurestores/write",
            f"{ML}/featurestores/delete",
        ],
    ),
}
# What the app does in the workspace to register its runner environment (a GET, then a PUT of the
# version, which makes the environment's container too) and to run jobs on it.
APP_OPERATIONS = [
    f"{ML}/environments/read",
    f"{ML}/environments/write",
    f"{ML}/environments/versions/read",
    f"{ML}/environments/versions/write",
    f"{ML}/jobs/read",
    f"{ML}/jobs/write",
    f"{ML}/jobs/cancel/action",
]
# The settings that replace the app's own runner environment or its definition.
OVERRIDES = [AzureMlSettings.setting(k) for k in ("environment", "conda_file", "image")]


def pattern(permission: str) -> re.Pattern[str]:
    """An Action as Azure matches it: case-insensitive, ``*`` any text, ``/*/`` also none.

    So ``computes/*/write`` denies ``computes/write`` (the Data Scientist cannot create a
    cluster), and ``workspaces/*/write`` would allow ``workspaces/write`` but for its NotAction.
    """
    parts = [re.escape(p) for p in permission.split("/*/")]
    return re.compile("/(?:.*/)?".join(parts).replace(r"\*", ".*"), re.I)


def allowed(operation: str, actions: list[str], not_actions: list[str]) -> bool:
    """Azure's rule: an operation some Action matches and no NotAction does."""

    def matches(permissions: list[str]) -> bool:
        return any(pattern(p).fullmatch(operation) for p in permissions)

    return matches(actions) and not matches(not_actions)


def read(name: str) -> str:
    return without_comments((INFRA / name).read_text())


def bicep_files() -> dict[str, str]:
    return {
        p.relative_to(INFRA).as_posix(): read(p.relative_to(INFRA).as_posix())
        for p in sorted(INFRA.rglob("*.bicep"))
    }


def environment_problems(files: dict[str, str]) -> list[str]:
    """What makes the app run jobs on a fixed environment, or keeps it from registering its own."""
    found = []
    for name, text in files.items():
        for resource in resources(text):
            if resource.type.startswith(f"{ML}/environments"):
                found.append(
                    f"{name}: {resource.symbol} registers an environment ({resource.type})"
                )
        for setting in OVERRIDES:
            if re.search(rf"\bname:\s*'{setting}'", text):
                found.append(f"{name}: sets {setting}, so the app does not use its own")
        if re.search(r"azureml:[\w.-]+:\w+", text):
            found.append(f"{name}: names a fixed environment version")
    function_roles = [
        role
        for resource in resources(files["modules/aml.bicep"])
        if resource.type == "Microsoft.Authorization/roleAssignments"
        and re.search(r"principalId:\s*functionPrincipalId\b", resource.body)
        and re.search(r"\bscope:\s*workspace\b", resource.body)
        for role in re.findall(r"roleDefinitionId:.*\broles\.(\w+)", resource.body)
    ]
    if not function_roles:
        found.append("the function app gets no role on the workspace")
    for operation in APP_OPERATIONS:
        if not any(allowed(operation, *ROLE_PERMISSIONS.get(r, ([], []))) for r in function_roles):
            found.append(f"the function app's roles {function_roles} do not allow {operation}")
    return found


def test_the_infra_registers_no_runner_environment_and_the_app_may_register_its_own() -> None:
    assert environment_problems(bicep_files()) == []


ENVIRONMENT = f"""
resource runnerEnvironment '{ML}/environments@2025-12-01' = {{
  parent: workspace
  name: 'ephemerid-runner'
}}
"""


@pytest.mark.parametrize(
    ("file", "mutation", "expected"),
    [
        (
            "modules/aml.bicep",
            ("resource functionSubmits ", f"{ENVIRONMENT}\nresource functionSubmits "),
            "runnerEnvironment registers an environment",
        ),
        (
            "modules/app.bicep",
            (
                "        { name: 'EPHEMERID_AML_CLUSTER', value: amlCluster }\n",
                "        { name: 'EPHEMERID_AML_CLUSTER', value: amlCluster }\n"
                "        { name: 'EPHEMERID_AML_ENVIRONMENT', value: amlEnvironment }\n",
            ),
            "sets EPHEMERID_AML_ENVIRONMENT",
        ),
        (
            "main.bicep",
            (
                "var amlCluster = 'gpu'\n",
                "var amlCluster = 'gpu'\nvar e = 'azureml:ephemerid-runner:1'\n",
            ),
            "names a fixed environment version",
        ),
        (
            "modules/aml.bicep",
            ("roleDefinitions', roles.azureMlDataScientist)", "roleDefinitions', roles.reader)"),
            f"do not allow {ML}/environments/versions/write",
        ),
    ],
)
def test_a_fixed_environment_or_a_role_that_cannot_register_one_turns_the_check_red(
    file: str, mutation: tuple[str, str], expected: str
) -> None:
    files = bicep_files()
    old, new = mutation
    assert old in files[file]

    found = environment_problems({**files, file: files[file].replace(old, new, 1)})

    assert any(expected in problem for problem in found), found

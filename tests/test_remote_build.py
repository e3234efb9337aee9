"""The function app builds and indexes the way Azure's remote build does it, from what it ships.

``azd deploy`` uploads this folder less what ``.funcignore`` names; Azure's remote build runs
``pip install -r requirements.txt --target .python_packages/lib/site-packages`` in it
(``requirements.txt`` installs the app's own package, ``.[azure]``, from that same folder); the
Python worker then imports ``function_app`` with only that folder and the app's root on
``sys.path`` and indexes the functions it registers. These tests do the same in a temporary
folder: a file ``.funcignore`` drops that the build or the import needs, or a dependency
``requirements.txt`` (and the package's extra) lacks, turns them red. The import runs in a fresh
interpreter (``-I -S``) that sees neither this checkout's sources nor the test environment's
packages.

The full build installs the Azure SDKs with pip (about 30 s with pip's cache warm, minutes cold):
it is marked ``slow`` and runs in CI like every other test.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import azure.functions as func
import pathspec
import pytest

from ephemerid.functions import handlers_from_settings, register

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = Path(".python_packages") / "lib" / "site-packages"  # where the remote build installs
# What the Python worker does at indexing, in an interpreter without site-packages: the app's root
# and the build's folder first on sys.path, import function_app, list its functions.
PROBE = """
import importlib, json, sys
app, packages, modules = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
leaked = [p for p in sys.path if "site-packages" in p or "src" in p.split("/")]
assert not leaked, f"the interpreter already sees packages: {leaked}"
sys.path[:0] = [app, packages]
import function_app, ephemerid
for name in modules:
    importlib.import_module(name)
print(json.dumps({
    "ephemerid": ephemerid.__file__,
    "functions": {
        f.get_function_name(): json.loads(f.get_function_json())["bindings"]
        for f in function_app.app.get_functions()
    },
}))
"""


class RemoteBuildFailed(AssertionError):
    pass


def shipped(root: Path, funcignore: str) -> list[str]:
    """The checkout's files (tracked or new, not git-ignored) that ``.funcignore`` lets through."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    ignored = pathspec.GitIgnoreSpec.from_lines(funcignore.splitlines())
    return [f for f in listed if not ignored.match_file(f) and (root / f).is_file()]


def stage(dest: Path, *, funcignore: str | None = None, requirements: str | None = None) -> Path:
    """A clean app folder with only what would be uploaded (the overrides change only the copy)."""
    funcignore = (ROOT / ".funcignore").read_text() if funcignore is None else funcignore
    for name in shipped(ROOT, funcignore):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest / name)
    if requirements is not None:
        (dest / "requirements.txt").write_text(requirements)
    return dest


def build(app: Path, *, deps_from: Path | None = None) -> None:
    """``pip install -r requirements.txt --target .python_packages/...``, run in ``app``.

    With ``deps_from`` (an app folder already built from the same requirements), the build's
    folder starts as a copy of that build's dependencies (hard links, without its ephemerid) and
    pip builds and installs only the app's own package: what changed between the two folders.
    """
    deps = []
    if deps_from is not None:
        shutil.copytree(
            deps_from / PACKAGES,
            app / PACKAGES,
            copy_function=os.link,
            ignore=lambda _, names: [n for n in names if n.startswith("ephemerid")],
        )
        deps = ["--no-deps"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-input", "--no-compile", *deps, "-r", "requirements.txt", "--target", str(PACKAGES)],
        cwd=app, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RemoteBuildFailed(f"pip install -r requirements.txt failed in {app}:\n{tail}")


def third_party_modules() -> list[str]:
    """Every module outside the standard library that the package imports (lazy imports too),
    except one imported under ``try: ... except ImportError`` that the deployed app does not
    declare (optional for the user: pandas for a DataFrame)."""
    declared = declared_distributions()
    found = set()
    for path in (ROOT / "src" / "ephemerid").rglob("*.py"):
        tree = ast.parse(path.read_text())
        optional = {id(node) for guard in ast.walk(tree) if _guards_import(guard)
                    for stmt in guard.body for node in ast.walk(stmt)}  # fmt: skip
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            for name in names:
                top = name.split(".")[0]
                if id(node) in optional and top not in declared:
                    continue
                if top not in sys.stdlib_module_names and top not in {"ephemerid", "__future__"}:
                    found.add(".".join(name.split(".")[:3]) if top == "azure" else top)
    return sorted(found)


def declared_distributions() -> set[str]:
    """What the app's requirements install: the package's dependencies and its azure extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["azure"]]
    return {re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].replace("-", "_") for spec in wanted}


def _guards_import(node: ast.AST) -> bool:
    """A ``try`` whose handlers catch ImportError (or ModuleNotFoundError)."""
    if not isinstance(node, ast.Try):
        return False
    caught = [h.type for h in node.handlers if h.type is not None]
    names = {n.id for t in caught for n in ast.walk(t) if isinstance(n, ast.Name)}
    return bool(names & {"ImportError", "ModuleNotFoundError"})


def index(app: Path) -> dict[str, list[str]]:
    """Import function_app from ``app`` and its build alone: each function's binding types."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PROBE, str(app), str(app / PACKAGES),
         json.dumps(third_party_modules())],
        cwd=app, capture_output=True, text=True,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(app)},
    )  # fmt: skip
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise RemoteBuildFailed(f"importing function_app from the build failed:\n{tail}")
    found = json.loads(done.stdout)
    assert Path(found["ephemerid"]).is_relative_to(app / PACKAGES), found["ephemerid"]
    return {name: sorted(b["type"] for b in bs) for name, bs in found["functions"].items()}


def registered_here() -> dict[str, list[str]]:
    """The functions function_app.py registers, read in this process from the checkout."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, handlers_from_settings)
    return {
        f.get_function_name(): sorted(b.get_dict_repr()["type"] for b in f.get_bindings())
        for f in app.get_functions()
    }


def test_funcignore_keeps_what_the_build_and_the_import_need_and_drops_the_rest() -> None:
    files = shipped(ROOT, (ROOT / ".funcignore").read_text())
    tops = {f.split("/")[0] for f in files}

    assert {"function_app.py", "host.json", "requirements.txt", "pyproject.toml"} <= tops
    assert {"src", "README.md", "examples"} <= tops  # the wheel's package, readme, force-include
    assert not tops & {"tests", "infra", "docs", "bench", "node_modules", "local.settings.json"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped files, built once for the module: the full remote build."""
    app = stage(tmp_path_factory.mktemp("shipped"))
    build(app)
    return app


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_remote_build_from_the_shipped_files_indexes_every_function_with_its_bindings(
    built: Path,
) -> None:
    functions = index(built)

    assert functions == registered_here()
    triggers = {t for types in functions.values() for t in types}
    assert {"blobTrigger", "serviceBusTrigger", "queueTrigger", "timerTrigger"} <= triggers
    assert {"httpTrigger", "http"} <= triggers


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_funcignore_that_drops_the_package_sources_turns_the_build_red(
    built: Path, tmp_path: Path
) -> None:
    """pip itself succeeds here (the wheel then holds only the force-included examples): only the
    import shows that the package is gone. The dependencies are the full build's (unchanged by
    ``.funcignore``); the app's own package is built from this folder's shipped files."""
    app = stage(tmp_path, funcignore=(ROOT / ".funcignore").read_text() + "\nsrc\n")

    with pytest.raises(RemoteBuildFailed, match=r"No module named 'ephemerid\.\w+'"):
        build(app, deps_from=built)
        index(app)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_requirements_without_the_apps_own_package_turn_the_import_red(tmp_path: Path) -> None:
    """Only the build's folder counts: this environment's own ephemerid does not hide the gap."""
    app = stage(tmp_path, requirements="azure-functions\n")
    build(app)

    with pytest.raises(RemoteBuildFailed, match="No module named 'ephemerid'"):
        index(app)


def test_the_import_check_skips_only_optional_imports_the_app_does_not_declare() -> None:
    modules = third_party_modules()

    assert {"uv", "watchfiles", "pathspec", "azure.ai.ml"} <= set(modules)  # guarded, declared
    assert "pandas" not in modules  # guarded by ImportError and not a dependency: the user's

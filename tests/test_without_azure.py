"""`import ephemerid` and the embedded default need no Azure package; Azure adapters say what to
install when one is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCK_AZURE = """
import sys
class NoAzure:
    def find_spec(self, name, path=None, target=None):
        if name == "azure" or name.startswith("azure."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NoAzure())
"""


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_AZURE + code], cwd=tmp_path, capture_output=True, text=True
    )


def test_the_cli_and_local_services_import_and_build_without_azure(tmp_path: Path) -> None:
    done = run(
        "import ephemerid, ephemerid.cli, ephemerid.cli.demo, ephemerid.runner\n"
        "from ephemerid.app import build_service\n"
        "from ephemerid.settings import Settings\n"
        "service = build_service(Settings.from_env({}, home='home'))\n"
        "print(service.store.list(), sorted(service.backends))\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] ['local']"


def test_an_azure_adapter_without_the_extra_names_the_pip_command(tmp_path: Path) -> None:
    done = run(
        "from ephemerid.artifacts import open_artifacts\n"
        "from ephemerid.errors import MissingExtra\n"
        "try:\n"
        "    open_artifacts('az://', {'EPHEMERID_STORAGE': 'UseDevelopmentStorage=true'})\n"
        "except MissingExtra as exc:\n"
        "    print(exc)\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'ephemerid[azure]'" in done.stdout

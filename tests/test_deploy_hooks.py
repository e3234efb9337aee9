"""The postdeploy hooks, run as azd runs them: the shell hook for real against a stand-in ``az``
on PATH (no Azure here), the PowerShell hook read for what breaks it on Windows."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

HOOKS = Path(__file__).resolve().parents[1] / "infra" / "hooks"

# A stand-in for the Azure CLI: records each call, and answers the blobs_extension key only
# from the Nth call on, as a function app does once its host has loaded the blob extension.
FAKE_AZ = """#!/bin/sh
printf '%s\\n' "$*" >> "$AZ_CALLS"
case "$*" in
  "functionapp show"*) echo app.azurewebsites.net ;;
  "functionapp keys list"*)
    n=$(grep -c 'functionapp keys list' "$AZ_CALLS")
    if [ "$n" -ge "$KEY_FROM_CALL" ]; then echo 'k3y&x=1'; fi ;;
esac
"""


def run_hook(
    tmp_path: Path, key_from_call: int, tries: int = 5
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    az = bin_dir / "az"
    az.write_text(FAKE_AZ)
    az.chmod(az.stat().st_mode | stat.S_IEXEC)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AZ_CALLS": str(tmp_path / "calls.txt"),
        "KEY_FROM_CALL": str(key_from_call),
        "AZURE_RESOURCE_GROUP": "rg-test",
        "AZURE_FUNCTION_APP_NAME": "func-test",
        "AZURE_EVENTGRID_TOPIC_NAME": "topic-test",
        "POSTDEPLOY_KEY_TRIES": str(tries),
        "POSTDEPLOY_KEY_WAIT_S": "0",
    }
    (tmp_path / "calls.txt").write_text("")
    return subprocess.run(
        ["sh", str(HOOKS / "postdeploy.sh")], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_shell_hook_waits_for_the_blob_extension_key_then_subscribes(tmp_path: Path) -> None:
    done = run_hook(tmp_path, key_from_call=3)

    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert sum("functionapp keys list" in c for c in calls) == 3
    assert "waiting for the function host to load its blob extension (try 2 of 5)" in done.stderr
    subscriptions = [c for c in calls if "event-subscription create" in c]
    assert len(subscriptions) == 2
    assert all("&code=k3y&x=1" in c for c in subscriptions)  # the whole URL, & and all
    assert "k3y" not in done.stdout + done.stderr  # the key is never printed


def test_the_shell_hook_gives_up_after_its_bound_saying_what_it_waited_for(
    tmp_path: Path,
) -> None:
    done = run_hook(tmp_path, key_from_call=99, tries=3)

    assert done.returncode == 1
    assert "no blobs_extension key after 3 tries" in done.stderr
    calls = (tmp_path / "calls.txt").read_text()
    assert "event-subscription create" not in calls


def powershell() -> str:
    return (HOOKS / "postdeploy.ps1").read_text()


def test_the_powershell_hook_quotes_the_webhook_url_for_cmd_on_windows() -> None:
    text = powershell()
    # az is az.cmd on Windows: cmd.exe splits an unquoted argument at '&'
    assert re.search(r"\$endpoint = '\"' \+ \$endpoint \+ '\"'", text)
    assert "--endpoint $endpoint" in text
    assert not re.search(r"--endpoint \"https://[^\n]*&code=", text)


@pytest.mark.parametrize("function", ["Subscribe"])
def test_no_powershell_local_shadows_a_parameter_whatever_its_case(function: str) -> None:
    text = powershell()
    header = re.search(rf"function {function}\(([^)]*)\)", text)
    assert header
    params = {p.lower() for p in re.findall(r"\$(\w+)", header.group(1))}
    body = text[header.end() :]
    assigned = {name.lower() for name in re.findall(r"^\s*\$(\w+)\s*=", body, re.M)}
    assert assigned & params == set()


def test_the_powershell_hook_waits_for_the_key_within_a_bound() -> None:
    text = powershell()
    assert "Start-Sleep" in text and "$attempt -ge $tries" in text

"""Which home a command works on, and what it says when that home is not there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EPH = Path(sys.executable).with_name("eph")
READS = [
    ["list"],
    ["status", "train-0123456789ab"],
    ["logs", "train-0123456789ab"],
    ["cancel", "train-0123456789ab"],
    ["rejected"],
    ["reap"],
    ["models", "list"],
]


def eph(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")}
    env.update(NO_COLOR="1", COLUMNS="300")
    return subprocess.run(
        [str(EPH), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


@pytest.mark.parametrize("command", READS, ids=lambda c: " ".join(c))
def test_a_read_command_on_a_home_that_does_not_exist_is_an_error_naming_it(
    command: list[str], tmp_path: Path
) -> None:
    mistyped = tmp_path / "hom"

    done = eph(*command, "--home", str(mistyped), "--json", cwd=tmp_path)

    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    assert f"home '{mistyped}' does not exist" in error and "--home" in error
    assert not mistyped.exists()

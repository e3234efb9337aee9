"""`eph` run in the test's own process, for tests about what a command answers rather than how
its process behaves (starting, detaching, signals): no fresh interpreter importing the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner

from ephemerid.cli import main

EPH = Path(sys.executable).with_name("eph")


def run_eph(
    args: tuple[str, ...], env: Mapping[str, str], cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> subprocess.CompletedProcess[str]:
    """``eph ARGS`` through its ``main``, as the real command would answer it: its exit code, its
    stdout, and its stderr on one line. ``env`` holds the EPHEMERID_ settings the command sees
    (any other EPHEMERID_ variable of this process is hidden from it) and what else it sets."""
    hidden: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EPHEMERID_")}
    monkeypatch.chdir(cwd)
    with CliRunner().isolation(env={**hidden, **env}) as (out, err, _):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        sys.stdout.flush()  # the isolation's text streams buffer
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), " ".join(err.getvalue().decode().split())
    return subprocess.CompletedProcess([str(EPH), *args], code, stdout, stderr)

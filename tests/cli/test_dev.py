"""`eph dev --storage azurite`: it says how to reach the Azurite it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from azure.storage.blob import BlobServiceClient

from ephemerid.testing.azurite import ACCOUNT, KEY

EPH = Path(sys.executable).with_name("eph")
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def eph_dev(tmp_path: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`eph dev --storage azurite` on a free port, stopped with Ctrl-C at the end."""
    (tmp_path / "ephemerid.yaml").write_text("rules: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")}
    env.update(NO_COLOR="1", PATH=f"{REPO / 'node_modules' / '.bin'}{os.pathsep}{env['PATH']}")
    command = [str(EPH), "dev", "--storage", "azurite", "--port", "0", *extra]
    command += ["--home", str(tmp_path / "home")]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as dev:
        try:
            yield dev
        finally:
            dev.send_signal(signal.SIGINT)
            dev.communicate(timeout=60)


def test_eph_dev_with_azurite_prints_its_account_and_endpoints_but_not_the_key(
    tmp_path: Path,
) -> None:
    with eph_dev(tmp_path) as dev:
        assert dev.stderr is not None
        lines = []
        for line in dev.stderr:
            lines.append(line)
            if "job events follow" in line:
                break
    said = "".join(lines)

    assert f"azurite: account {ACCOUNT}" in said, said
    for kind in ("blob", "queue", "table"):
        assert any(
            line.split()[:1] == [kind] and line.split()[1].startswith("http://127.0.0.1:")
            for line in lines
        ), said
    assert "--json" in said and KEY not in said


def test_eph_dev_json_gives_a_connection_string_that_reaches_its_azurite(tmp_path: Path) -> None:
    with eph_dev(tmp_path, "--json") as dev:
        assert dev.stdout is not None
        lines = []
        for line in dev.stdout:  # the JSON document ends with a closing brace of its own
            lines.append(line)
            if line.rstrip() == "}":
                break
        azurite = json.loads("".join(lines))["azurite"]
        client = BlobServiceClient.from_connection_string(azurite["connection_string"])
        with client:
            client.create_container("reached")
            names = [c.name for c in client.list_containers()]

    assert azurite["account"] == ACCOUNT
    assert azurite["blob_endpoint"] == client.url.rstrip("/")
    assert "reached" in names
    assert {"queue_endpoint", "table_endpoint"} <= set(azurite)

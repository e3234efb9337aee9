"""A sweep from a notebook's API (in a script, and inside a running asyncio loop) and from the
CLI, each moved on by the home's agent with no command driving it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ephemerid.agent import stop
from sweeping import TRAIN

EPH = Path(sys.executable).with_name("eph")
SWEEP = {
    "kind": "sweep",
    "name": "api",
    "trial": {"code": "./code", "entrypoint": "train.py"},
    "search": {
        "method": "random",
        "space": {"lr": {"loguniform": [0.01, 0.3]}},
        "metric": "val_loss",
        "max_trials": 3,
        "max_parallel": 2,
    },
    "register_best": {"name": "lin", "alias": "staging"},
}
IN_A_LOOP = """
import asyncio, json, sys
import ephemerid

async def main():
    client = ephemerid.Client()
    sweep = client.submit_sweep(sys.argv[1])  # returns at once: the agent runs the trials
    ticks = 0
    while not sweep.record.settled:
        await asyncio.sleep(0.05)  # the loop is never blocked while the sweep runs
        ticks += 1
    rows = client.compare([sweep], by="val_loss")
    print(json.dumps({"state": sweep.state.value, "ticks": ticks, "rows": rows,
                      "sweep": sweep.sweep, "trials": [t.id for t in sweep.trials()]}))

asyncio.run(main())
"""
IN_A_SCRIPT = """
import json, sys
import ephemerid

with ephemerid.Client() as client:
    sweep = client.submit_sweep(sys.argv[1])
    record = sweep.wait(timeout=240)
    print(json.dumps({"state": record.state.value, "model": record.model_version}))
"""


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text(TRAIN)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    yield tmp_path
    stop(tmp_path / "home")  # never leave an agent behind


def env(folder: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")},
        "EPHEMERID_HOME": str(folder / "home"),
        "EPHEMERID_AGENT_IDLE_S": "30",
        "EPHEMERID_HEARTBEAT_S": "0.5",
        "EPHEMERID_LOCAL_SLOTS": "2",
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }


def run(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), capture_output=True, text=True, env=env(folder), cwd=folder, timeout=300
    )


def output(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_sweep_from_inside_a_running_asyncio_loop(folder: Path) -> None:
    (folder / "loop.py").write_text(IN_A_LOOP)
    got = output(run(folder, sys.executable, "loop.py", "sweep.yaml"))

    assert got["state"] == "SUCCEEDED"
    assert got["ticks"] > 0
    assert sorted(r["id"] for r in got["rows"]) == sorted(got["trials"])
    assert len(got["trials"]) == 3
    values = [r["metrics"]["val_loss"] for r in got["rows"]]
    assert values == sorted(values)
    assert got["sweep"]["best"]["job"] == got["rows"][0]["id"]


def test_a_sweep_from_a_script_waits_for_its_trials_and_registers_the_best(folder: Path) -> None:
    (folder / "script.py").write_text(IN_A_SCRIPT)
    got = output(run(folder, sys.executable, "script.py", "sweep.yaml"))

    assert got == {"state": "SUCCEEDED", "model": "lin:1"}


def test_the_cli_submits_shows_and_compares_a_sweep(folder: Path) -> None:
    shown = output(run(folder, str(EPH), "submit", "sweep.yaml", "--json"))
    sweep_id = shown["id"]
    status = output(run(folder, str(EPH), "status", sweep_id, "--json"))
    compared = output(
        run(folder, str(EPH), "runs", "compare", sweep_id, "--by", "val_loss", "--json")
    )
    table = run(folder, str(EPH), "sweep", "show", sweep_id)
    again = output(run(folder, str(EPH), "sweep", "submit", "sweep.yaml", "--detach", "--json"))

    assert shown["state"] == "SUCCEEDED"
    assert shown["counts"] == {"running": 0, "succeeded": 3, "pruned": 0, "failed": 0}
    assert status["state"] == "SUCCEEDED"
    assert status["sweep"]["best"] == shown["best"]
    assert compared[0]["id"] == shown["best"]["job"]
    assert len(compared) == 3
    assert table.returncode == 0
    assert "3 succeeded" in table.stderr and shown["best"]["job"] in table.stderr  # for people
    assert again["id"] != sweep_id  # no key: a new sweep (with --key it would be the same)

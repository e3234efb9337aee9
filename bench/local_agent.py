"""Benchmark 1's local figure through the CLI: result.json -> compute released, by the agent.

Two sets of jobs on the embedded default (a folder as the bucket, SQLite, local compute), each
in a home of its own, with ``EPHEMERID_LOCAL_SLOTS`` = jobs so none waits:

- **detached**: ``eph submit --detach`` once per job; every command has returned before any job
  ends, so nothing but the home's agent (which the first submit started) handles the results;
- **attached**: ``eph submit`` per job, all following their job at once, as before the agent.

Each job holds until a gate file appears (opened once every submit has returned, or is
following), then sleeps ``index * stagger`` seconds, so results land spread out, not at once.
Per job: ``result.json`` written (its mtime) -> ``released_at`` in the job's record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EPH = [sys.executable, "-c", "from ephemerid.cli import main; main()"]
GATED_SCRIPT = """
import json, os, pathlib, time
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
gate = pathlib.Path(params["gate"])
while not gate.exists():
    time.sleep(0.05)
time.sleep(params["delay"])
print("trained")
"""


def run(root: Path, jobs: int, detach: bool, stagger: float = 0.2) -> list[dict[str, Any]]:
    """Submit ``jobs`` gated jobs through the CLI; the rows once all are released."""
    name = "detached" if detach else "attached"
    home, code, gate = root / f"cli-{name}", root / f"code-{name}", root / f"gate-{name}"
    code.mkdir(parents=True)
    (code / "job.py").write_text(GATED_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")}
    env.update(
        EPHEMERID_HOME=str(home),
        EPHEMERID_LOCAL_SLOTS=str(jobs),
        EPHEMERID_AGENT_IDLE_S="30",
        EPHEMERID_RULES=str(root / "no-rules.yaml"),
    )
    followers = []
    for i in range(jobs):
        command = [*EPH, "submit", "--code", str(code), "--entrypoint", "job.py", "--json"]
        command += ["--param", f"gate={gate}", "--param", f"delay={i * stagger:.2f}"]
        command += ["--key", f"bench-{name}-{i}"]
        if detach:
            subprocess.run([*command, "--detach"], env=env, check=True, capture_output=True)
        else:
            followers.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    if not detach:
        _wait_running(home, jobs)
    gate.touch()  # from here on, with --detach, no command runs
    for follower in followers:
        follower.wait(timeout=600)
    records = _wait_released(home, jobs)
    subprocess.run([*EPH, "agent", "stop", "--json"], env=env, capture_output=True)
    return [_row(home, job) for job in records]


def _jobs(home: Path) -> list[Any]:
    from ephemerid.app import build_service
    from ephemerid.settings import Settings

    service = build_service(Settings.from_env({}, home=home))
    try:
        return service.list()
    finally:
        service.close()


def _wait_running(home: Path, jobs: int) -> None:
    deadline = time.monotonic() + 300
    while sum(j.state.value == "RUNNING" for j in _jobs(home)) < jobs:
        if time.monotonic() > deadline:
            raise SystemExit(f"{home}: the attached jobs did not all start")
        time.sleep(0.2)


def _wait_released(home: Path, jobs: int) -> list[Any]:
    deadline = time.monotonic() + 600
    while True:
        records = _jobs(home)
        if len(records) == jobs and all(r.compute_state.value == "released" for r in records):
            return records
        if time.monotonic() > deadline:
            raise SystemExit(f"{home}: jobs not released after 10 minutes")
        time.sleep(0.2)


def _row(home: Path, job: Any) -> dict[str, Any]:
    result = home / "bucket" / "runs" / job.id / "result.json"
    written = result.stat().st_mtime_ns / 1e9
    return {
        "job": job.id,
        "state": job.state.value,
        "released_s": job.released_at.timestamp() - written,
        "python": job.python,
    }


if __name__ == "__main__":  # python bench/local_agent.py [jobs]: this figure alone
    import tempfile

    import common

    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        out = {
            mode: common.summary(
                [r["released_s"] for r in run(Path(tmp), count, mode == "detached")]
            )
            for mode in ("detached", "attached")
        }
    print(json.dumps(out, indent=2))

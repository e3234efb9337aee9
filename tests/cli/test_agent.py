"""The local agent as a user meets it: jobs move on with no command running, reads change
nothing, `eph agent` status and stop, a crashed agent started again, schedules to the second."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from drive import HOLD_SCRIPT, Gate, alive, wait_for, wait_gone, write_script
from ephemerid.agent import AgentLock, stop
from ephemerid.app import build_service
from ephemerid.record import JobRecord, utcnow
from ephemerid.settings import Settings
from ephemerid.testing.settle import settled
from in_process import run_eph

EPH = Path(sys.executable).with_name("eph")
Eph = Callable[..., subprocess.CompletedProcess[str]]
QUICK_SCRIPT = "print('quick job done')\n"
SUBMIT_ONLY = """
import json, sys
from ephemerid.app import build_service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
service = build_service(Settings.from_env({}, home=sys.argv[1]))
spec = JobSpec.model_validate({"kind": "train", "code": sys.argv[2], "entrypoint": "job.py"})
print(json.dumps(service.submit(spec).job.to_json()))
service.close()
"""


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    stop(home)  # never leave an agent behind


@pytest.fixture
def env(home: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")},
        "EPHEMERID_HOME": str(home),
        "EPHEMERID_RULES": str(tmp_path / "ephemerid.yaml"),
        "EPHEMERID_AGENT_IDLE_S": "30",
        "EPHEMERID_HEARTBEAT_S": "0.5",
        "COLUMNS": "300",
        "NO_COLOR": "1",
    }


@pytest.fixture
def eph(env: dict[str, str], tmp_path: Path) -> Eph:
    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(EPH), *args],
            capture_output=True,
            text=True,
            env={**env, **extra},
            cwd=tmp_path,
            timeout=90,
        )

    return run


@pytest.fixture
def eph_here(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Eph:
    """`eph ARGS` in this process, as the `eph` fixture's command would answer them."""
    return lambda *args: run_eph(args, env, tmp_path, monkeypatch)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def records(home: Path) -> dict[str, JobRecord]:
    """The jobs as the store holds them, read without any command (and without driving them)."""
    service = build_service(Settings.from_env({}, home=home))
    try:
        return {job.id: job for job in service.list()}
    finally:
        service.close()


def submit(eph: Eph, code_dir: Path, *extra: str, **env: str) -> dict[str, Any]:
    command = ["submit", "--code", str(code_dir), "--entrypoint", "job.py", "--detach", "--json"]
    return as_json(eph(*command, *extra, **env))


def test_two_detached_jobs_finish_with_no_command_running(
    eph: Eph, home: Path, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, HOLD_SCRIPT)
    one_slot = {"EPHEMERID_LOCAL_SLOTS": "1"}
    first = submit(eph, code_dir, "--param", f"gate={gate.path}", **one_slot)
    second = submit(eph, code_dir, "--param", f"gate={tmp_path / 'open'}", **one_slot)
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "open").touch()  # the second job, once started, ends at once

    gate.open()  # no `eph` command runs from here on
    done = wait_for(
        lambda: (jobs := records(home)) and all(settled(j) for j in jobs.values()) and jobs,
        "both jobs to finish and give their compute back",
        timeout=60,
    )

    assert (first["state"], second["state"]) == ("RUNNING", "WAITING_FOR_CAPACITY")
    assert [done[j["id"]].state.value for j in (first, second)] == ["SUCCEEDED", "SUCCEEDED"]
    assert {job.compute_state.value for job in done.values()} == {"released"}


def fingerprint(home: Path) -> dict[str, str]:
    """Every file under the home, by path, with a hash of its bytes."""
    return {
        str(path.relative_to(home)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(home.rglob("*"))
        if path.is_file()
    }


def test_every_read_command_leaves_the_store_byte_for_byte_unchanged(
    eph: Eph, eph_here: Eph, home: Path, code_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "ephemerid.yaml").write_text(
        "rules:\n  - name: nightly\n    schedule: '0 0 2 * * *'\n"
        "    job: {kind: train, code: code, entrypoint: job.py}\n"
    )
    write_script(code_dir, QUICK_SCRIPT)
    command = ["submit", "--code", str(code_dir), "--entrypoint", "job.py", "--json"]
    registered = as_json(eph(*command))  # follows the job to its end
    stop(home)
    # a job whose result has landed and that nobody has handled: a read must not complete it
    submitted = subprocess.run(
        [sys.executable, "-c", SUBMIT_ONLY, str(home), str(code_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    pending = json.loads(submitted.stdout)
    wait_for((home / "bucket" / "runs" / pending["id"] / "result.json").exists, "its result")
    wait_gone([pending["handle"]["pid"]])
    before = fingerprint(home)

    job = registered["id"]
    reads = [
        ("list",),
        ("list", "--json"),
        ("status", job),
        ("status", pending["id"], "--json"),
        ("logs", job),
        ("logs", pending["id"], "--json"),
        ("models", "list"),
        ("models", "list", "--json"),
        ("rejected",),
        ("rejected", "--json"),
        ("schedules",),
        ("schedules", "--json"),
        ("agent", "status"),
        ("agent", "status", "--json"),
    ]
    # the reads in this process (the same commands, no interpreter each); one through `eph` itself
    failed = [(r, d.stderr) for r in reads if (d := eph_here(*r)).returncode != 0]
    failed += [(r, d.stderr) for r in reads[-1:] if (d := eph(*r)).returncode != 0]

    assert failed == []
    assert fingerprint(home) == before
    assert records(home)[pending["id"]].state.value == "RUNNING"  # nothing handled its result


def test_agent_status_and_stop(eph: Eph, home: Path) -> None:
    started = as_json(eph("agent", "--detach", "--json"))
    running = as_json(eph("agent", "status", "--json"))
    stopped = as_json(eph("agent", "stop", "--json"))
    after = as_json(eph("agent", "status", "--json"))
    again = as_json(eph("agent", "stop", "--json"))

    assert running["running"] is True
    assert running["pid"] == started["pid"]
    assert running["home"] == str(home)
    assert running["since"] and running["open_jobs"] == 0
    assert stopped == {"stopped": True, "home": str(home), "pid": started["pid"]}
    assert not alive(started["pid"])
    assert after["running"] is False
    assert again["stopped"] is False


def test_a_second_foreground_agent_is_refused_naming_the_first(eph: Eph, home: Path) -> None:
    started = as_json(eph("agent", "--detach", "--json"))

    second = eph("agent")

    assert second.returncode == 1
    assert f"pid {started['pid']}" in " ".join(second.stderr.split())
    assert alive(started["pid"])


def test_the_agent_exits_once_nothing_is_open_and_the_next_submit_starts_one(
    eph: Eph, home: Path, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, HOLD_SCRIPT)
    job = submit(eph, code_dir, "--param", f"gate={gate.path}", EPHEMERID_AGENT_IDLE_S="1")
    gate.pid()  # the job runs, so the agent stays however long this machine takes
    first = AgentLock(home).holder()
    assert first is not None

    gate.open()
    wait_gone([first.pid], timeout=60)
    assert settled(records(home)[job["id"]])
    assert AgentLock(home).holder() is None

    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "open").touch()  # the next job ends at once
    again = submit(
        eph,
        code_dir,
        "--key",
        "second",
        f"--param=gate={tmp_path / 'open'}",
        EPHEMERID_AGENT_IDLE_S="1",
    )
    wait_for(lambda: settled(records(home)[again["id"]]), "the next job to finish", timeout=60)


def test_a_crashed_agent_is_started_again_by_the_next_submit(
    eph: Eph, home: Path, code_dir: Path
) -> None:
    write_script(code_dir, QUICK_SCRIPT)
    crashed = as_json(eph("agent", "--detach", "--json"))
    os.kill(crashed["pid"], signal.SIGKILL)
    wait_gone([crashed["pid"]])

    job = submit(eph, code_dir)
    agent = AgentLock(home).holder()

    assert agent is not None and agent.pid != crashed["pid"]
    wait_for(lambda: settled(records(home)[job["id"]]), "the job to finish", timeout=60)


def test_a_schedule_with_seconds_fires_at_its_second(
    eph: Eph, home: Path, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, QUICK_SCRIPT)
    at = utcnow() + timedelta(seconds=10)
    if at.second > 45:  # keep its minute's end far from it: the old tick fired only there
        at = at.replace(second=5) + timedelta(minutes=1)
    (tmp_path / "ephemerid.yaml").write_text(
        f"rules:\n  - name: every-minute\n    schedule: '{at.second} * * * * *'\n"
        f"    job: {{kind: train, code: {code_dir}, entrypoint: job.py}}\n"
    )
    listed = as_json(eph("schedules", "--json"))
    eph("agent", "--detach", "--json")

    [fired] = wait_for(lambda: list(records(home).values()), "the schedule to fire", timeout=90)

    assert listed[0]["rule"] == "every-minute"
    assert datetime.fromisoformat(listed[0]["next"]).second == at.second
    assert fired.key == f"cron:every-minute@{at.replace(microsecond=0).isoformat()}"
    assert fired.created_at < at.replace(second=59, microsecond=0)  # not the next minute's tick


def test_eph_dev_stops_the_agent_and_drives_the_home_itself(
    eph: Eph, env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    (tmp_path / "ephemerid.yaml").write_text("rules: []\n")
    agent = as_json(eph("agent", "--detach", "--json"))
    command = [str(EPH), "dev", "--json", "--port", "0"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as dev:
        try:
            assert dev.stdout is not None
            for line in dev.stdout:  # the wiring is printed once the host holds the home
                if line.rstrip() == "}":
                    break
            during = as_json(eph("agent", "status", "--json"))
            refused = eph("agent", "stop")
        finally:
            dev.send_signal(signal.SIGINT)
            dev.communicate(timeout=30)
    after = as_json(eph("agent", "status", "--json"))

    assert not alive(agent["pid"])
    assert (during["running"], during["kind"], during["pid"]) == (True, "dev", dev.pid)
    assert refused.returncode == 1 and "eph dev" in refused.stderr
    assert after["running"] is False

"""One agent per home, however many commands start it at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from drive import alive, wait_for
from ephemerid.agent import AgentInfo, AgentLock, agent_env, ensure_running, stop
from ephemerid.settings import Settings


@pytest.fixture
def home(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # the agents started here stay until the test stops them: on a loaded machine the starts
    # can take longer than the suite's short idle exit, and an agent gone idle holds no lock
    monkeypatch.setenv("EPHEMERID_AGENT_IDLE_S", "600")
    yield settings.home
    stop(settings.home)


def agents_in(home: Path) -> list[int]:
    """Live agent processes running in ``home``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"ephemerid.agent" in command and cwd == str(home) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_concurrent_starts_start_one_agent(settings: Settings, home: Path) -> None:
    starts = 6
    ready = threading.Barrier(starts + 2)
    infos: list[AgentInfo] = []

    def start() -> None:
        ready.wait()
        infos.append(ensure_running(settings))

    def start_raw() -> subprocess.CompletedProcess[bytes]:
        ready.wait()  # a start that skips the starters' turn: the lock still allows one agent
        return subprocess.run(
            [sys.executable, "-m", "ephemerid.agent", "--detach"],
            env=agent_env(os.environ, settings),
            cwd=home,
            capture_output=True,
            timeout=60,
        )

    home.mkdir(parents=True, exist_ok=True)
    raw: list[subprocess.CompletedProcess[bytes]] = []
    threads = [threading.Thread(target=start) for _ in range(starts)]
    threads += [threading.Thread(target=lambda: raw.append(start_raw())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)

    holder = AgentLock(home).holder()
    assert holder is not None
    assert {info.pid for info in infos} == {holder.pid}
    assert [done.returncode for done in raw] == [0, 0]
    assert wait_for(lambda: agents_in(home) == [holder.pid], "one agent left") is True


def test_the_started_agent_inherits_no_secret_of_the_starting_shell(
    settings: Settings, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_API_TOKEN", "s3cret-value")
    monkeypatch.setenv("EPHEMERID_AGENT_POLL_S", "7")

    info = ensure_running(settings)
    environ = dict(
        item.split(b"=", 1)
        for item in Path(f"/proc/{info.pid}/environ").read_bytes().split(b"\0")
        if b"=" in item
    )

    assert b"MY_API_TOKEN" not in environ
    assert b"s3cret-value" not in b"".join(environ.values())
    assert environ[b"EPHEMERID_AGENT_POLL_S"] == b"7"  # the settings travel
    assert environ[b"EPHEMERID_HOME"] == str(home).encode()
    assert Path(os.readlink(f"/proc/{info.pid}/cwd")) == home


def test_an_agent_whose_home_is_removed_exits_and_reaps_nothing_there_again(
    settings: Settings, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EPHEMERID_AGENT_POLL_S", "0.2")
    info = ensure_running(settings)
    shutil.rmtree(home)  # a user resetting the home while its agent runs

    assert wait_for(lambda: not alive(info.pid), "the orphaned agent to exit", 60)


def test_a_detached_start_returns_while_the_agent_runs_on(settings: Settings, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(  # a starter reading the command's output gets its end at once
        [sys.executable, "-m", "ephemerid.agent", "--detach"],
        env=agent_env(os.environ, settings),
        cwd=home,
        capture_output=True,
        timeout=60,
    )
    holder = AgentLock(home).holder()

    assert done.returncode == 0, done.stderr
    assert holder is not None and alive(holder.pid)
    assert os.getsid(holder.pid) == holder.pid  # a session of its own

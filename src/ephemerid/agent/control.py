"""Start, find and stop a home's agent from any command.

``ensure_running`` starts a detached agent when none runs: ``python -m ephemerid.agent
--detach`` with this process's interpreter, which forks the agent into a session of its own
(stdout and stderr to ``<home>/agent/agent.log``) and exits once the agent holds the home's lock,
so the agent is nobody's child and the starter waits on something definite. Starters take
turns (``AgentLock.starting``), so concurrent submits start one agent; an agent that finds the
lock taken exits at once, so even a start that slipped past would be harmless.

The agent gets an allow-listed environment: the ``EPHEMERID_*`` settings (the service needs
them, the storage connection included), what finds Python and its packages, the locale and the
GPU variables. The rules file and the home are passed as absolute paths: the agent runs in the
home, not in the folder it was started from, and keeps the settings it was started with.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from ephemerid.agent.lock import AgentInfo, AgentLock
from ephemerid.errors import EphemeridError, Unavailable
from ephemerid.settings import Settings

START_TIMEOUT_S = 60.0
LOG_KEPT = 1024 * 1024
PASSED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "SHELL"}
    | {"PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV", "CONDA_PREFIX"}
)
PASSED_PREFIXES = ("EPHEMERID_", "LC_", "CUDA_", "NVIDIA_")


class AgentFailed(EphemeridError):
    """The agent did not start; the message quotes its log."""


def agent_env(env: Mapping[str, str], settings: Settings) -> dict[str, str]:
    kept = {k: v for k, v in env.items() if k in PASSED or k.startswith(PASSED_PREFIXES)}
    kept["EPHEMERID_HOME"] = str(settings.home)
    kept["EPHEMERID_RULES"] = str(settings.rules_path.resolve())
    return kept


def ensure_running(settings: Settings, timeout: float = START_TIMEOUT_S) -> AgentInfo:
    """The home's agent, started detached if none runs (or `eph dev` drives the home)."""
    lock = AgentLock(settings.home)
    info = lock.holder()
    if info is not None:
        return info
    with lock.starting(timeout):
        info = lock.holder()
        if info is not None:  # another command started it meanwhile
            return info
        return _start(settings, lock, timeout)


def _start(settings: Settings, lock: AgentLock, timeout: float) -> AgentInfo:
    with contextlib.suppress(OSError):  # one earlier log is kept, of at most LOG_KEPT bytes
        if lock.log_path.stat().st_size > LOG_KEPT:
            lock.log_path.replace(lock.log_path.with_suffix(".log.1"))
    with lock.log_path.open("ab") as log:
        starter = subprocess.Popen(
            [sys.executable, "-m", "ephemerid.agent", "--detach"],
            cwd=settings.home,
            env=agent_env(os.environ, settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        code = starter.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        starter.kill()
        starter.wait()
        raise Unavailable(
            f"the agent of {settings.home} did not start within {timeout:.0f}s: see {lock.log_path}"
        ) from None
    info = lock.holder()
    if code != 0 or info is None:
        raise AgentFailed(
            f"the agent of {settings.home} did not start (exit code {code}): "
            f"{_tail(lock.log_path)} (log: {lock.log_path}); `eph agent` runs it in the foreground"
        )
    return info


def stop(home: Path, timeout: float = 30.0) -> AgentInfo | None:
    """End the home's agent (SIGTERM, then wait for its lock); what it was, None if none ran.

    It only ever signals the process that holds the home's lock: a stale pid is never signalled.
    """
    lock = AgentLock(home)
    info = lock.holder()
    if info is None:
        return None
    if info.pid <= 0 or info.kind != "agent":
        raise Unavailable(
            f"{home} is driven by `eph {'dev' if info.kind == 'dev' else 'agent'}` "
            f"(pid {info.pid}): stop that command with Ctrl-C"
        )
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while lock.holder() is not None:
        if time.monotonic() > deadline:
            raise Unavailable(
                f"the agent of {home} (pid {info.pid}) did not stop within {timeout:.0f}s: "
                f"see {lock.log_path}"
            )
        time.sleep(0.05)
    return info


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-lines:]) or "the log is empty"

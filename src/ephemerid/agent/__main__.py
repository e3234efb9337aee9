"""``python -m ephemerid.agent [--detach]``: run the agent of ``EPHEMERID_HOME``.

``--detach`` forks: the child is the agent; the parent exits 0 once the agent holds the home's
lock (or another agent does), else with the agent's exit code. ``ephemerid.agent.control``
starts it so; ``eph agent`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ephemerid.agent import AgentLock, AgentRunning, serve
from ephemerid.settings import Settings

ALREADY_RUNNING = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ephemerid.agent")
    parser.add_argument("--detach", action="store_true", help="fork, return once it runs")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.detach:
        pid = os.fork()
        if pid:
            return _started(pid, AgentLock(settings.home))
        _daemonized(AgentLock(settings.home))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(settings)
    except AgentRunning as exc:
        logging.getLogger("ephemerid.agent").info("%s", exc)
        return ALREADY_RUNNING
    return 0


def _daemonized(lock: AgentLock) -> None:
    """The forked agent lets go of its starter's terminal and pipes: a session of its own, and
    stdin from /dev/null, stdout and stderr to the home's agent log. A starter that reads the
    command's output (``subprocess.run(..., capture_output=True)``) then gets its end at once,
    not when the agent exits."""
    os.setsid()
    lock.dir.mkdir(parents=True, exist_ok=True)
    log = os.open(lock.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def _started(pid: int, lock: AgentLock, timeout: float = 60.0) -> int:
    """0 once ``pid`` (or another agent) holds the lock; the agent's exit code if it ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = lock.holder()
        if info is not None and info.pid == pid:
            return 0
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return 0 if code == ALREADY_RUNNING and lock.holder() is not None else (code or 1)
        time.sleep(0.01)
    return 1


if __name__ == "__main__":
    sys.exit(main())

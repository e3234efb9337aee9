"""The local agent: the embedded default's stand-in for the Functions host, one per home.

On Azure the Functions host hands each event to a function the moment it comes. Locally the
agent does it: it handles each ``result.json`` (the job is completed and its compute released
at once), starts waiting jobs as slots free, submits what the rules make of a blob dropped in
``incoming/``, fires each schedule at its second, and runs the reaper, all through the same
``Intake`` and ``Service`` paths the functions call. Commands that only read change nothing.

It is started on demand (``eph submit``, ``eph logs -f``, ``eph agent --detach``; ``eph dev``
drives the home itself and holds the same lock), runs detached in a session of its own, and exits
once nothing has been open for ``EPHEMERID_AGENT_IDLE_S``; anything can start it again. ``eph
agent`` runs it in the foreground, ``eph agent status`` says whether one runs, ``eph agent stop``
ends it.
"""

from __future__ import annotations

import logging
import os
import signal

from ephemerid.agent.control import AgentFailed, agent_env, ensure_running, stop
from ephemerid.agent.lock import AgentInfo, AgentLock, AgentRunning
from ephemerid.agent.loop import Agent
from ephemerid.record import utcnow
from ephemerid.settings import Settings

__all__ = [
    "Agent",
    "AgentFailed",
    "AgentInfo",
    "AgentLock",
    "AgentRunning",
    "agent_env",
    "ensure_running",
    "serve",
    "stop",
]
log = logging.getLogger("ephemerid.agent")


def serve(settings: Settings, kind: str = "agent") -> Agent:
    """Run the home's agent here until it is stopped (SIGTERM, Ctrl-C) or idle.

    AgentRunning when another process drives the home already.
    """
    lock = AgentLock(settings.home)
    info = AgentInfo(
        pid=os.getpid(),
        home=str(settings.home),
        since=utcnow().isoformat(timespec="seconds"),
        kind=kind,
        rules=str(settings.rules_path.resolve()),
        log=str(lock.log_path),
    )
    with lock.held(info):
        agent = Agent(settings, home_gone=lambda: not lock.still_held())
        previous = signal.signal(signal.SIGTERM, lambda *_: agent.stop())
        log.info("agent %d drives %s (rules: %s)", info.pid, info.home, info.rules)
        try:
            agent.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
            log.info("agent %d stopped", info.pid)
    return agent

"""A job's environment where its code runs: built (or found built) before the code, and the
command that runs the code in it: the environment's Python, its container image, or the
runner's own Python when the job names no environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from ephemerid.contract import Launch
from ephemerid.envs.build import Environments, Ready, Write, package_path
from ephemerid.envs.container import in_container


def prepare(
    launch: Launch,
    root: Path,
    work: Path,
    env: dict[str, str],
    write: Write,
    say: Callable[[str], None],
) -> Ready | None:
    """The job's environment under ``root``, ready to run (None: the runner's own, or an image).

    The installer's output goes to ``write`` (the job's log); ``env`` gains this ephemerid
    package on ``PYTHONPATH`` (for ``ephemerid.track``). BuildFailed when it cannot be built.
    """
    plan = launch.environment
    if plan is None or plan.image:
        return None
    ready = Environments(root).prepare(plan, work / "code", work, write)
    how = "built" if ready.built else "cached"
    say(f"environment {plan.id} ({how}) ready in {ready.seconds:.2f}s")
    paths = [env.get("PYTHONPATH", ""), str(package_path(work))]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return ready


def user_command(
    launch: Launch, ready: Ready | None, entry: Path, env: dict[str, str], work: Path, name: str
) -> list[str]:
    """The program and arguments that run ``entry`` (a list: never a shell line)."""
    python = str(ready.python) if ready else sys.executable
    command = [python, "-u", str(entry), *launch.args]
    image = launch.environment.image if launch.environment else ""
    if not image:
        return command
    env["PYTHONPATH"] = str(package_path(work))
    return in_container(image, name, work, entry.parent, command[1:], env)

"""One agent per home: an exclusive ``flock`` on ``<home>/agent/agent.lock``, holding its pid.

The kernel frees the lock when its holder dies, however it dies, so a crashed agent's lock is
free again at once and its stale content means nothing: only a held lock names a running agent.
Reading who holds it (``holder``) opens the file read-only and never creates it, so a read
command leaves the home as it was. Starters take ``start.lock`` in turn first, so two commands
starting an agent at the same moment start one (``ephemerid.agent.control``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ephemerid.errors import Unavailable

AGENT_DIR = "agent"


@dataclass(frozen=True)
class AgentInfo:
    """What the holder of a home's agent lock wrote about itself."""

    pid: int
    home: str
    since: str  # ISO time it took the lock
    kind: str = "agent"  # "agent", or "dev" while `eph dev` drives the home
    rules: str = ""
    log: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class AgentLock:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.dir = home / AGENT_DIR
        self.path = self.dir / "agent.lock"
        self.start_path = self.dir / "start.lock"
        self.log_path = self.dir / "agent.log"
        self._fd: int | None = None

    # -- the holder ------------------------------------------------------------------------------

    def acquire(self, info: AgentInfo) -> bool:
        """Take the lock and write ``info`` in it; False when another process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info.to_json()).encode(), 0)
        self._fd = fd
        return True

    def still_held(self) -> bool:
        """Whether the lock file this process holds is still the home's: False once the home was
        removed (``rm -rf``) or its lock file replaced, when another agent may drive a new one."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing it frees the lock
            self._fd = None

    @contextlib.contextmanager
    def held(self, info: AgentInfo) -> Iterator[None]:
        if not self.acquire(info):
            raise AgentRunning(self)
        try:
            yield
        finally:
            self.release()

    # -- readers ---------------------------------------------------------------------------------

    def holder(self) -> AgentInfo | None:
        """The process holding the lock now, None when none does. Creates and changes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            for _ in range(100):  # a new holder writes its info just after taking the lock
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass
                else:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    return None
                info = _parse(os.pread(fd, 64 * 1024, 0))
                if info is not None:
                    return info
                time.sleep(0.01)
            return AgentInfo(pid=0, home=str(self.home), since="")
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def starting(self, timeout: float = 60.0) -> Iterator[None]:
        """Starters of this home's agent, one at a time."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.start_path, os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Unavailable(
                            f"another command has been starting the agent of {self.home} for "
                            f"over {timeout:.0f}s: see {self.log_path}, then try again"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)


class AgentRunning(Unavailable):
    """The home already has an agent (or `eph dev`) driving it."""

    def __init__(self, lock: AgentLock) -> None:
        info = lock.holder()
        who = f"pid {info.pid}, {info.kind}, since {info.since}" if info else "a process"
        super().__init__(
            f"an agent already drives {lock.home} ({who}): `eph agent status` shows it, "
            "`eph agent stop` ends it"
        )


def _parse(data: bytes) -> AgentInfo | None:
    try:
        values = json.loads(data)
        return AgentInfo(**values)
    except (ValueError, TypeError):
        return None

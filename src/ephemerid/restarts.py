"""A runner started again on the same machine: after a reboot, a redeploy, or a crash.

On azure-vm the runner's systemd unit is enabled and restarts on failure (``vm_body``), so a
platform reboot or redeploy (the OS disk is kept) starts it again with the same job. ``Starts``
keeps what the next start must know in the work folder: how many times a runner started for this
job here, and the process group of the last entrypoint. A start then:

- stands down when the job's ``result.json`` is written already (it is never overwritten);
- stands down when another runner holds the work folder (its lock), so the user's script never
  runs twice at once;
- ends what is left of the last start's entrypoint (same boot, still in the work folder);
- reruns the job from its last uploaded checkpoint, at most ``restarts`` times (the launch's,
  ``EPHEMERID_RUNNER_RESTARTS``), each said in the job's log; past that it reports the job failed
  with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import IO

STATE_FILE = "runner-state.json"
LOCK_FILE = "runner.lock"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class Busy(Exception):
    """Another runner holds this work folder: it runs the job."""


class GaveUp(Exception):
    """The runner was started again more often than the launch allows: the job fails."""


@dataclass(frozen=True)
class Start:
    """This start: its number (1 for the first) and how many leftover processes it ended."""

    number: int
    restarts: int  # how many starts after the first the launch allows
    ended: int = 0

    def notes(self) -> list[str]:
        """What the job's log says of this start (nothing for a first start)."""
        notes = (
            [f"ended {self.ended} process(es) the last start left running"] if self.ended else []
        )
        if self.number > 1:
            notes.append(
                f"started again on this compute (restart {self.number - 1} of at most "
                f"{self.restarts}: a reboot, a redeploy or a crash ended the last start): "
                "rerunning the job from its last uploaded checkpoint"
            )
        return notes


class Starts:
    """The runner's starts for one job in ``work`` (kept on the machine's disk)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._lock: IO[str] | None = None

    def lock(self) -> None:
        """Hold the work folder for this process; Busy when another runner holds it."""
        self.work.mkdir(parents=True, exist_ok=True)
        lock = (self.work / LOCK_FILE).open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise Busy(f"another runner holds {self.work / LOCK_FILE}") from None
        self._lock = lock  # held until ``release`` or this process ends

    def claim(self, restarts: int, staged: tuple[str, ...]) -> Start:
        """Count this start (the folder locked), end the last start's leftovers, and clear what
        the last start staged (``staged``: names in the work folder); GaveUp past ``restarts``."""
        assert self._lock is not None, "lock() the work folder first"
        state = self._read()
        ended = self._end_leftovers(state)
        number = int(str(state.get("starts", 0))) + 1
        self._write({"starts": number})
        if number - 1 > restarts:
            raise GaveUp(
                f"the runner was started again {number - 1} time(s) on this compute (a reboot, "
                f"a redeploy or a crash each time), more than the {restarts} its job allows "
                "(EPHEMERID_RUNNER_RESTARTS): the job is not run again here; submit it again"
            )
        if number > 1:
            self._clear(staged)
        return Start(number, restarts, ended)

    def _clear(self, staged: tuple[str, ...]) -> None:
        for name in staged:
            path = self.work / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def release(self) -> None:
        """Let the work folder go (the lock goes with this process too)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def entrypoint(self, pgid: int) -> None:
        """Note the process group of the entrypoint now running (for the next start)."""
        state = self._read()
        self._write({**state, "pgid": pgid, "boot": _boot_id()})

    def _end_leftovers(self, state: dict[str, object]) -> int:
        pgid = state.get("pgid")
        if not isinstance(pgid, int) or pgid <= 1 or state.get("boot") != _boot_id():
            return 0  # none noted, or a reboot ended them all (and pids are reused)
        ours = [pid for pid in _group(pgid) if _cwd_under(pid, self.work)]
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(ours)

    def _read(self) -> dict[str, object]:
        try:
            state = json.loads((self.work / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write(self, state: dict[str, object]) -> None:
        path = self.work / STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, path)


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
    return found


def _cwd_under(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` works inside ``folder`` (the entrypoint runs in its code folder)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(folder.resolve())
    except OSError:
        return False

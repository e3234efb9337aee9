"""What the runner watches while the entrypoint runs, and why it may stop it early.

``watch`` waits for the entrypoint until it ends by itself, or returns the ``Stop`` that ends
it: ``max_runtime`` passed, a spot eviction notice (``Eviction``, from the VM's Scheduled
Events), or its work folder outgrowing a disk limit (``DiskWatch``: local compute, so that a job
cannot fill the disk that holds the bucket and the job store). ``stop_group`` then ends it:
SIGTERM, grace, SIGKILL.
"""

from __future__ import annotations

import math
import os
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ephemerid.contract import RunStatus
from ephemerid.imds import ScheduledEvents

DISK_CHECK_S = 1.0
DISK_SETTING = "EPHEMERID_LOCAL_DISK_LIMIT_BYTES"  # settings.py: Settings.local_disk_limit_bytes


@dataclass(frozen=True)
class Stop:
    """Why the runner stops the entrypoint: the result's status and reason, the log line, and
    whether the outputs are still worth uploading (not from a job that filled its disk)."""

    status: RunStatus
    reason: str
    note: str
    upload: bool = True


class Eviction:
    """A spot VM's Scheduled Events, asked whether this VM is about to be preempted."""

    def __init__(self, events: ScheduledEvents) -> None:
        self.events = events

    def stop(self) -> Stop | None:
        event = self.events.preempt()
        if event is None:
            return None
        return Stop(
            RunStatus.EVICTED,
            "the spot VM was preempted; the job resumes from its checkpoint",
            f"spot eviction notice (event {event.get('EventId')}, not before "
            f"{event.get('NotBefore')}): stopping the entrypoint (SIGTERM) to checkpoint",
        )


class DiskWatch:
    """The size of a folder on disk, measured at most every ``every_s`` (and never more than a
    tenth of the time: a folder of many files is walked less often)."""

    def __init__(self, folder: Path, limit: int, every_s: float = DISK_CHECK_S) -> None:
        self.folder, self.limit, self.every_s = folder, limit, every_s
        self._next = 0.0

    def stop(self) -> Stop | None:
        if time.monotonic() < self._next:
            return None
        began = time.monotonic()
        used = disk_usage(self.folder)
        self._next = time.monotonic() + max(self.every_s, 10 * (time.monotonic() - began))
        if used <= self.limit:
            return None
        return Stop(
            RunStatus.FAILED,
            f"disk limit of {self.limit} bytes reached: the job's work folder held {used} bytes "
            f"(outputs, checkpoint and scratch); write less or raise {DISK_SETTING}",
            f"disk limit of {self.limit} bytes reached ({used} bytes under {self.folder}): "
            "stopping (SIGTERM)",
            upload=False,
        )


def disk_usage(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (a hard-linked file once; no symlink)."""
    total, seen, todo = 0, set(), [str(folder)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:  # gone or unreadable meanwhile
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                todo.append(entry.path)
            elif (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                blocks = getattr(info, "st_blocks", None)
                total += blocks * 512 if blocks is not None else info.st_size
    return total


def watch(
    proc: subprocess.Popen[bytes],
    max_runtime: float,
    watchers: list[Eviction | DiskWatch],
    poll_s: float,
) -> Stop | None:
    """Wait for ``proc`` until ``max_runtime``, asking the watchers every ``poll_s``; the first
    that answers a Stop ends it early."""
    deadline = time.monotonic() + max_runtime
    while not wait(proc, min(poll_s, max(deadline - time.monotonic(), 0))):
        if time.monotonic() >= deadline:
            return Stop(
                RunStatus.TIMED_OUT,
                f"ran past max_runtime of {max_runtime:.0f}s and was stopped",
                f"max runtime {max_runtime:.0f}s reached: stopping (SIGTERM)",
            )
        for watcher in watchers:
            stop = watcher.stop()
            if stop is not None:
                return stop
    return None


def wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the user's process group, then SIGKILL it after ``grace`` seconds."""
    for sig, seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if wait(proc, seconds):
            return


def watchers(
    events: ScheduledEvents | None, events_poll_s: float, work: Path, disk_limit: int | None
) -> tuple[list[Eviction | DiskWatch], float]:
    """What may stop the entrypoint early besides max_runtime, and how often to ask."""
    found: list[Eviction | DiskWatch] = []
    every = []
    if events is not None:
        found.append(Eviction(events))
        every.append(events_poll_s)
    if disk_limit is not None:
        found.append(DiskWatch(work, disk_limit))
        every.append(DISK_CHECK_S)
    return found, min(every, default=math.inf)

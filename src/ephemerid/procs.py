"""The processes of one local job: find them all from the job alone, end them, confirm (Linux).

A job's processes are found three ways, so that neither a crash of ephemerid nor a daemon that
leaves its session escapes:

- its **cgroup** (cgroup v2, where this machine lets us make one): the runner joins it before it
  starts anything, every process it starts is born in it, and no ``setsid`` or double fork
  leaves it;
- its **mark**: the runner and the user's code carry ``EPHEMERID_LOCAL_JOB=<work folder>`` in
  their environment, which every child inherits (``/proc/<pid>/environ`` keeps the value a
  process was started with), and the runner carries ``--work-dir <work folder>`` on its
  command line;
- **descent**: every descendant of a process found so. The runner is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``), so an orphaned daemon becomes its child instead of init's.

The mark and the work folder are derived from the job id, so a backend that never saw the
handle (ephemerid died between starting the runner and saving it) still finds every process.
The runner imports this module: it stays light (psutil and the standard library).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

ENV_MARK = "EPHEMERID_LOCAL_JOB"
_PR_SET_CHILD_SUBREAPER = 36
_ATTRS = ["ppid", "cmdline", "environ", "status"]


def cgroup_name(mark: str) -> str:
    return "ephemerid-" + hashlib.sha256(mark.encode()).hexdigest()[:16]


def _cgroup2_mount() -> tuple[str, Path] | None:
    """(the hierarchy's folder it shows, where) for the cgroup v2 mount; None if there is none."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    fields = next((m.split() for m in mounts if " - cgroup2 " in m), None)
    return (fields[3], Path(fields[4])) if fields else None


def cgroup_of(pid: int | str = "self") -> Path | None:
    """The cgroup v2 folder of ``pid`` (of this process by default); None without cgroup v2."""
    mount = _cgroup2_mount()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    shown, where = mount
    if not (path + "/").startswith(shown.rstrip("/") + "/"):
        return None  # a cgroup outside what this mount shows
    return where / path[len(shown.rstrip("/")) :].lstrip("/")


def make_cgroup(mark: str) -> Path | None:
    """A cgroup of the job's own below this process's, or None where that is not allowed."""
    parent = cgroup_of()
    if parent is None:
        return None
    path = parent / cgroup_name(mark)
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return path if (path / "cgroup.procs").is_file() else None


def cgroup_members(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove_cgroup(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class Processes:
    """The live processes that carry ``mark``, sit in ``cgroups``, or descend from ``root``
    or from any of those; ``end`` stops them all (SIGTERM, grace, SIGKILL) and confirms.

    The process calling never counts itself.
    """

    def __init__(
        self, *, mark: str | None = None, cgroups: Iterable[Path] = (), root: int | None = None
    ) -> None:
        self.mark, self.root = mark, root
        self.cgroups = {c for c in cgroups if c is not None}
        self._seen: dict[int, psutil.Process] = {}

    def find(self) -> list[psutil.Process]:
        """One scan of the machine's processes; also those seen before that still live."""
        me, table = os.getpid(), {}
        seeds = {pid for pid, proc in self._seen.items() if _running(proc)}  # not a reused pid
        for proc in psutil.process_iter(_ATTRS, ad_value=None):
            info = proc.info
            if proc.pid == me or info["status"] == psutil.STATUS_ZOMBIE:
                continue
            table[proc.pid] = proc
            if self.mark and _marked(info, self.mark):
                seeds.add(proc.pid)
                self._note_cgroup(proc.pid)
            if self.root is not None and info["ppid"] == self.root:
                seeds.add(proc.pid)
        for path in self.cgroups:
            seeds.update(cgroup_members(path))
        found = _with_descendants(seeds, table)
        for pid in found:
            if pid not in self._seen or not _running(self._seen[pid]):
                self._seen[pid] = table[pid]
        return [p for p in self._seen.values() if _running(p) and p.pid != me]

    def end(self, grace_s: float, kill_wait_s: float = 5.0) -> bool:
        """Stop every process found; True once none is left."""
        termed: set[int] = set()

        def term() -> bool:
            left = self.find()
            for proc in left:
                if proc.pid not in termed:
                    termed.add(proc.pid)
                    _send(proc, signal.SIGTERM)
            return not left

        def kill() -> bool:
            for path in self.cgroups:
                with contextlib.suppress(OSError):
                    (path / "cgroup.kill").write_text("1")
            left = self.find()
            for proc in left:
                _send(proc, signal.SIGKILL)
            return not left

        return _until(term, grace_s) or _until(kill, kill_wait_s)

    def _note_cgroup(self, pid: int) -> None:
        """A marked process in a cgroup named for the mark: all its cgroup is the job's."""
        path = cgroup_of(pid)
        if path is not None and self.mark and path.name == cgroup_name(self.mark):
            self.cgroups.add(path)


def marked_jobs(prefix: str) -> set[str]:
    """The marks (work folders) under ``prefix`` that live processes carry."""
    found = set()
    for proc in psutil.process_iter(["environ"], ad_value=None):
        mark = (proc.info["environ"] or {}).get(ENV_MARK, "")
        if mark.startswith(prefix):
            found.add(mark)
    return found


def reap_zombies(keep: int | None = None) -> None:
    """Collect this process's ended children (orphans a subreaper took in), except ``keep``."""
    for child in psutil.Process().children():
        if child.pid != keep:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(child.pid, os.WNOHANG)


def _marked(info: dict[str, object], mark: str) -> bool:
    environ = info["environ"]
    if isinstance(environ, dict) and environ.get(ENV_MARK) == mark:
        return True
    command = info["cmdline"]
    if isinstance(command, list) and "--work-dir" in command:
        return command[command.index("--work-dir") + 1 :][:1] == [mark]
    return False


def _with_descendants(seeds: set[int], table: dict[int, psutil.Process]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.info["ppid"], []).append(pid)
    found, todo = set(), [pid for pid in seeds if pid in table]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _send(proc: psutil.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)  # psutil checks first that the pid is still this process


def _until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Isolation:
    """How the runner keeps hold of everything the job starts: a cgroup, or as subreaper."""

    def __init__(self, cgroup: Path | None, subreaper: bool, note: str = "") -> None:
        self.cgroup, self.subreaper, self.note = cgroup, subreaper, note

    @classmethod
    def setup(cls, cgroup: Path | None) -> Isolation:
        """Join ``cgroup`` (before anything is started) and become a subreaper."""
        note = ""
        if cgroup is not None:
            try:
                (cgroup / "cgroup.procs").write_text(str(os.getpid()))
            except OSError as exc:
                note, cgroup = f" (could not join cgroup {cgroup}: {exc})", None
        return cls(cgroup, become_subreaper(), note)

    def describe(self) -> str:
        if self.cgroup is not None:
            how = f"cgroup {self.cgroup}" + (" + subreaper" if self.subreaper else "")
        elif self.subreaper:
            how = "subreaper + process walk"
        else:
            how = "process group only"
        return f"isolation: {how}{self.note}"

    def end_leftovers(self, grace_s: float, keep: int | None = None) -> int:
        """End what the entrypoint left running (daemons too); how many there were."""
        group = Processes(cgroups=[self.cgroup] if self.cgroup else [], root=os.getpid())
        left = len(group.find())
        if left:
            group.end(grace_s)
        reap_zombies(keep)
        return left

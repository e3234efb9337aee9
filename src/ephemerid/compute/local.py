"""Local compute: one runner subprocess per job on this machine, the embedded default.

Each job gets its own session (so teardown can find every process it started, grandchildren
included), its own scratch folder, and one slot. A slot is an exclusive ``flock`` on
``slots/<n>.lock`` that the runner inherits: the kernel frees it when the runner dies, so a
crashed ephemerid never leaks a slot. With GPUs visible (``nvidia-smi -L``), slot n is GPU n
and the job sees only that GPU through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ephemerid.compute import ComputeStatus, Handle, check_one_machine
from ephemerid.errors import CapacityUnavailable, SpecError
from ephemerid.record import JobRecord
from ephemerid.spec import JobSpec

if TYPE_CHECKING:
    from ephemerid.artifacts import ArtifactStore
    from ephemerid.settings import Settings

_PROC = Path("/proc")


def detect_gpus() -> list[str]:
    """GPU indices that ``nvidia-smi -L`` lists; none when it is absent or fails."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class LocalCompute:
    name = "local"

    def __init__(
        self,
        work_root: Path,
        artifacts_uri: str,
        *,
        slots: int | None = None,
        python: str = sys.executable,
        grace_s: float = 5.0,
        gpus: list[str] | None = None,
    ) -> None:
        self.work_root = work_root
        self.artifacts_uri = artifacts_uri
        self.python = python
        self.grace_s = grace_s
        self.gpus = detect_gpus() if gpus is None else gpus
        self.slots = slots or len(self.gpus) or 2
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        (work_root / "slots").mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings, artifacts: ArtifactStore) -> LocalCompute:
        return cls(
            settings.home / "compute",
            artifacts.root_uri,
            slots=settings.local_slots,
            grace_s=settings.grace_s,
        )

    def check(self, spec: JobSpec) -> None:
        check_one_machine(self.name, spec)
        if spec.compute.skus:
            raise SpecError(
                f"compute.skus: local compute has no SKUs ({', '.join(spec.compute.skus)}): "
                "drop compute.skus or pick azure-vm/azure-ml"
            )

    def close(self) -> None:
        """Nothing to let go of: the runners are processes of their own."""

    def provision(self, job: JobRecord) -> Handle:
        workdir = self.work_root / "jobs" / job.id
        existing = self._read_handle(workdir)
        if existing and self.poll(existing) is ComputeStatus.RUNNING:
            return existing
        slot, fd = self._take_slot()
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            gpu = self.gpus[slot] if slot < len(self.gpus) and job.spec.compute.gpus else ""
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"}
            command = [
                self.python,
                "-m",
                "ephemerid.runner",
                "--artifacts",
                self.artifacts_uri,
                "--job",
                job.id,
                "--work-dir",
                str(workdir),
            ]
            with (workdir / "runner.log").open("ab") as log:
                proc = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(fd,),
                )
        finally:
            os.close(fd)  # the runner holds its own copy of the lock
        self._children[proc.pid] = proc
        data = {
            "pid": proc.pid,
            "started": _start_ticks(proc.pid),
            "slot": slot,
            "gpu": gpu,
            "workdir": str(workdir),
        }
        (workdir / "handle.json").write_text(json.dumps(data))
        return Handle(self.name, job.id, data)

    def poll(self, handle: Handle) -> ComputeStatus:
        pid = handle.data.get("pid")
        if not pid:
            return ComputeStatus.GONE
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            return ComputeStatus.GONE
        alive = _start_ticks(pid) == handle.data.get("started") and not _zombie(pid)
        return ComputeStatus.RUNNING if alive else ComputeStatus.GONE

    def teardown(self, handle: Handle) -> bool:
        """Stop every process of the job's session (TERM, grace, KILL) and confirm none is left."""
        pid: int | None = handle.data.get("pid")
        # A live leader with another start time is a stranger that reused the pid: not ours.
        ours = pid is not None and _start_ticks(pid) in (None, handle.data.get("started"))
        if pid is not None and ours and _members(pid):
            _signal_session(pid, signal.SIGTERM)
            if not _wait_empty(pid, self.grace_s):
                _signal_session(pid, signal.SIGKILL)
                if not _wait_empty(pid, 5.0):
                    return False
        child = self._children.pop(pid, None) if pid else None
        if child is not None:
            child.wait(timeout=5)
        shutil.rmtree(self.work_root / "jobs" / handle.job_id, ignore_errors=True)
        return True

    def list_owned(self) -> list[Handle]:
        root = self.work_root / "jobs"
        if not root.is_dir():
            return []
        found = (self._read_handle(d) for d in sorted(root.iterdir()))
        return [h for h in found if h is not None]

    def _read_handle(self, workdir: Path) -> Handle | None:
        try:
            data = json.loads((workdir / "handle.json").read_text())
        except (OSError, ValueError):
            return Handle(self.name, workdir.name, {}) if workdir.is_dir() else None
        return Handle(self.name, workdir.name, data)

    def _take_slot(self) -> tuple[int, int]:
        for slot in range(self.slots):
            fd = os.open(self.work_root / "slots" / f"{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return slot, fd
        raise CapacityUnavailable(f"local: all {self.slots} slots are busy; the job waits for one")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from "state" on


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "Z"


def _members(sid: int) -> list[int]:
    """Live processes in session ``sid`` (Linux: from /proc; elsewhere: its process group)."""
    if not _PROC.is_dir():
        try:
            os.killpg(sid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [sid]
    members = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _signal_session(sid: int, sig: signal.Signals) -> None:
    for pid in _members(sid) or [sid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_empty(sid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _members(sid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

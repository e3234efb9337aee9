"""Local compute: one runner subprocess per job on this machine, the embedded default.

Each job gets its own session, its own work folder (``jobs/<id>``, the scratch) and one slot.
Its processes are found from the job id alone (``ephemerid.procs``): its cgroup where the
machine lets us make one, else the mark every process of the job inherits and their
descendants, the runner being a subreaper. Teardown ends them all and confirms none is left
before it says so, whatever the stored handle holds (it may be empty: ephemerid can die between
starting the runner and saving the handle); the work folder, which holds the handle and the
cgroup's path, goes only then. A slot is an exclusive ``flock`` on ``slots/<n>.lock`` that the
runner inherits: the kernel frees it when the runner dies, so a crashed ephemerid never leaks a
slot. With GPUs visible, slot n is GPU n and the job sees only that GPU through
``CUDA_VISIBLE_DEVICES``. The GPUs are counted cheaply, in this order: ``EPHEMERID_LOCAL_GPUS``
(N: GPUs 0 to N-1), else ``CUDA_VISIBLE_DEVICES`` when set (its list; empty or -1: none), else
the lines of ``nvidia-smi -L``. A job asking for more GPUs than that is refused with the count
found, unless its spec sets ``compute.cpu_fallback: true``: then it runs on the CPU and its
record says so (``sku``: ``cpu (fallback: ...)``); a GPU job takes only a slot that has a GPU.
The runner stops a job whose work folder outgrows ``disk_limit_bytes``
(``EPHEMERID_LOCAL_DISK_LIMIT_BYTES``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ephemerid import procs
from ephemerid.compute import ComputeStatus, Handle, check_one_machine
from ephemerid.contract import DISK_LIMIT_BYTES
from ephemerid.envs.build import find_python, find_uv
from ephemerid.envs.identity import this_python
from ephemerid.errors import CapacityUnavailable, SpecError
from ephemerid.record import JobRecord
from ephemerid.spec import JobSpec

if TYPE_CHECKING:
    from ephemerid.artifacts import ArtifactStore
    from ephemerid.settings import Settings

_PROC = Path("/proc")


def detect_gpus(count: int | None = None) -> tuple[list[str], str]:
    """The GPUs local compute may hand out, and how they were found (for the messages)."""
    if count is not None:
        return [str(i) for i in range(count)], "EPHEMERID_LOCAL_GPUS"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return ([] if ids[:1] == ["-1"] else ids), "CUDA_VISIBLE_DEVICES"
    return _nvidia_smi(), "nvidia-smi -L"


def _nvidia_smi() -> list[str]:
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
        gpus_found_by: str = "as configured",
        disk_limit_bytes: int = DISK_LIMIT_BYTES,
        envs_root: Path | None = None,
        price_per_hour: float = 0.0,
    ) -> None:
        self.work_root = work_root.resolve()  # the marks are its paths: one spelling only
        self.envs_root = (envs_root or self.work_root.parent / "envs").resolve()
        self.artifacts_uri = artifacts_uri
        self.python = python
        self.grace_s = grace_s
        self.disk_limit_bytes = disk_limit_bytes
        # of one job's compute; None when it is 0 (no price set: its cost is shown as time)
        self.price_per_hour = price_per_hour or None
        if gpus is None:  # ``gpus_found_by``: how they were counted, for the refusal's message
            gpus, gpus_found_by = detect_gpus()
        self.gpus, self.gpus_found_by = gpus, gpus_found_by
        self.slots = slots or len(self.gpus) or 2
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        (self.work_root / "slots").mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings, artifacts: ArtifactStore) -> LocalCompute:
        gpus, found_by = detect_gpus(settings.local_gpus)
        return cls(
            settings.home / "compute",
            artifacts.root_uri,
            slots=settings.local_slots,
            gpus=gpus,
            gpus_found_by=found_by,
            grace_s=settings.grace_s,
            disk_limit_bytes=settings.local_disk_limit_bytes,
            envs_root=settings.home / "envs",
            price_per_hour=settings.local_price_per_hour,
        )

    def check(self, spec: JobSpec) -> None:
        check_one_machine(self.name, spec)
        if spec.compute.skus:
            raise SpecError(
                f"compute.skus: local compute has no SKUs ({', '.join(spec.compute.skus)}): "
                "drop compute.skus or pick azure-vm/azure-ml"
            )
        asked, found = spec.compute.gpus, len(self.gpus)
        if asked > found and not spec.compute.cpu_fallback:
            raise SpecError(
                f"compute.gpus: {asked} GPU(s) asked, but local compute found {found} "
                f"({self.gpus_found_by}): ask for at most {found}, set compute.cpu_fallback: "
                "true to run on the CPU instead, or pick azure-vm/azure-ml"
            )
        check_environment(spec)

    def _on_cpu(self, spec: JobSpec) -> bool:
        """A job asking for more GPUs than there are, that its spec lets run on the CPU."""
        return spec.compute.gpus > len(self.gpus)

    def close(self) -> None:
        """The runners are processes of their own and run on; the ended ones are reaped."""
        self._reap_ended()

    def _reap_ended(self) -> None:
        """Collect the runners this process started that have ended (another process, the
        home's agent, may have torn them down), so a long-lived caller (a notebook) keeps no
        zombies."""
        for job_id, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[job_id]

    def provision(self, job: JobRecord) -> Handle:
        self._reap_ended()
        workdir = self._workdir(job.id)
        existing = self._read_handle(workdir)
        if existing and self.poll(existing) is ComputeStatus.RUNNING:
            return replace(existing, price_per_hour=self.price_per_hour)
        wants_gpu = job.spec.compute.gpus > 0 and not self._on_cpu(job.spec)
        slot, fd = self._take_slot(gpu=wants_gpu)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            cgroup = procs.make_cgroup(str(workdir))
            if cgroup is not None:  # written before the runner starts: teardown finds it
                (workdir / "cgroup").write_text(str(cgroup))
            gpu = self.gpus[slot] if wants_gpu else ""
            proc = self._start_runner(job, workdir, cgroup, gpu, fd)
        finally:
            os.close(fd)  # the runner holds its own copy of the lock
        self._children[job.id] = proc
        data = {
            "pid": proc.pid,
            "started": _start_ticks(proc.pid),
            "slot": slot,
            "gpu": gpu,
            "workdir": str(workdir),
            "cgroup": str(cgroup or ""),
        }
        sku = ""
        if self._on_cpu(job.spec):
            data["cpu_fallback"] = True
            sku = f"cpu (fallback: {job.spec.compute.gpus} GPU(s) asked, {len(self.gpus)} found)"
        (workdir / "handle.json").write_text(json.dumps(data))
        return Handle(self.name, job.id, data, sku=sku, price_per_hour=self.price_per_hour)

    def _start_runner(
        self, job: JobRecord, workdir: Path, cgroup: Path | None, gpu: str, fd: int
    ) -> subprocess.Popen[bytes]:
        """The runner, with the job's own interpreter (recorded at submit), whoever starts it."""
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": gpu,
            "PYTHONUNBUFFERED": "1",
            procs.ENV_MARK: str(workdir),
        }
        command = [
            job.python or self.python,
            "-m",
            "ephemerid.runner",
            "--artifacts",
            self.artifacts_uri,
            "--job",
            job.id,
            "--work-dir",
            str(workdir),
            "--disk-limit-bytes",
            str(self.disk_limit_bytes),
            "--envs-dir",  # the job's environment is built (once) and kept there
            str(self.envs_root),
        ]
        if cgroup is not None:
            command += ["--cgroup", str(cgroup)]
        with (workdir / "runner.log").open("ab") as log:
            return subprocess.Popen(
                command,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(fd,),
            )

    def poll(self, handle: Handle) -> ComputeStatus:
        pid = handle.data.get("pid")
        if not pid:
            return ComputeStatus.GONE
        child = self._children.get(handle.job_id)
        if child is not None and child.pid == pid and child.poll() is not None:
            return ComputeStatus.GONE
        alive = _start_ticks(pid) == handle.data.get("started") and not _zombie(pid)
        return ComputeStatus.RUNNING if alive else ComputeStatus.GONE

    def teardown(self, handle: Handle) -> bool:
        """Stop every process of the job (TERM, grace, KILL) and confirm none is left.

        The job's processes are looked for on the machine from the job id, never taken from
        ``handle``: a handle may be empty, or name a pid that a stranger has since been given.
        """
        workdir = self._workdir(handle.job_id)
        cgroups = self._cgroups(workdir, handle)
        if not procs.Processes(mark=str(workdir), cgroups=cgroups).end(self.grace_s):
            return False
        child = self._children.pop(handle.job_id, None)
        if child is not None:
            child.wait(timeout=5)
        for cgroup in cgroups:
            procs.remove_cgroup(cgroup)
        shutil.rmtree(workdir, ignore_errors=True)
        return True

    def list_owned(self) -> list[Handle]:
        """Every job with a work folder here, and any whose processes outlived their folder."""
        root = self.work_root / "jobs"
        dirs = sorted(root.iterdir()) if root.is_dir() else []
        owned = [h for h in (self._read_handle(d) for d in dirs) if h is not None]
        known = {h.job_id for h in owned}
        for mark in sorted(procs.marked_jobs(f"{root}{os.sep}")):
            job_id = Path(mark).name
            if job_id not in known:
                owned.append(Handle(self.name, job_id, {}))
        return owned

    def _workdir(self, job_id: str) -> Path:
        return self.work_root / "jobs" / job_id

    def _cgroups(self, workdir: Path, handle: Handle) -> list[Path]:
        """Where the job's cgroup may be: as provision wrote it down, or named for it here.

        Only a folder named for this job counts: a damaged handle cannot point teardown at a
        cgroup holding other processes.
        """
        name, own = procs.cgroup_name(str(workdir)), procs.cgroup_of()
        written = ""
        with contextlib.suppress(OSError):
            written = (workdir / "cgroup").read_text()
        places = [Path(p) for p in (handle.data.get("cgroup"), written) if p]
        places += [own / name] if own else []
        return sorted({p for p in places if p.name == name and p.is_dir()})

    def _read_handle(self, workdir: Path) -> Handle | None:
        try:
            data = json.loads((workdir / "handle.json").read_text())
        except (OSError, ValueError):
            return Handle(self.name, workdir.name, {}) if workdir.is_dir() else None
        return Handle(self.name, workdir.name, data)

    def _take_slot(self, gpu: bool) -> tuple[int, int]:
        """The first free slot (for a GPU job: of the slots that have a GPU) and its lock."""
        slots = min(self.slots, len(self.gpus)) if gpu else self.slots
        for slot in range(slots):
            fd = os.open(self.work_root / "slots" / f"{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return slot, fd
        kind = "GPU slots" if gpu else "slots"
        raise CapacityUnavailable(f"local: all {slots} {kind} are busy; the job waits for one")


def check_environment(spec: JobSpec) -> None:
    """Refuse at submit an environment this machine cannot give: an image with no docker here,
    a Python version it lacks. (The environment's Python, not its caller's, runs the job.)"""
    env = spec.environment
    if env is None:
        return
    if env.image and shutil.which("docker") is None:
        raise SpecError(
            f"environment.image: local compute runs no containers here (docker is not on PATH) "
            f"so it cannot run {env.image}: install docker, use environment.requirements or "
            "environment.pip, or pick compute.backend azure-vm"
        )
    if env.python and find_python(env.python) is None and not _uv_finds(env.python):
        raise SpecError(
            f"environment.python: Python {env.python} is not on this machine (no "
            f"python{env.python} on PATH): install it, or drop environment.python to use "
            f"this machine's Python {this_python()}"
        )


def _uv_finds(version: str) -> bool:
    uv = find_uv()
    if uv is None:
        return False
    found = subprocess.run(
        [uv, "python", "find", "--no-config", version],
        capture_output=True,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        timeout=30,
        check=False,
    )
    return found.returncode == 0


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

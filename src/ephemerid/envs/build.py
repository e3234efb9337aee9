"""Build an environment once per identity, under ``<root>/<id>/``, and hand out its interpreter.

The runner calls ``Environments(root).prepare(...)`` before the user's code starts. A ready
environment has its marker (``ephemerid-env.json``, written last); one without it is a build cut
short, removed and made again. Each identity has two lock files in ``<root>/.locks/``: ``<id>``,
held shared by each job using the environment for as long as its code runs, and ``<id>.build``,
held by the one job building it. So concurrent jobs needing one environment wait for one build
and never build it twice, and ``prune`` (which takes ``<id>`` exclusive, without waiting) never
removes one in use or being built. The kernel frees a lock when its holder dies: a killed job
or build never leaves one held.

The build runs with uv when it is installed (``uv venv`` then ``uv pip install``, with Python
downloads off) and with ``python -m venv`` and pip otherwise; ``EPHEMERID_INSTALLER=pip`` picks
pip. It runs in the requirements file's folder, so relative paths there name files of the code.
The installer sees only an allow-listed environment (the path, locale, proxy and installer
settings of the machine), never the service's keys. Its output goes to ``write`` (the job's
log); a failure raises BuildFailed with its last lines and leaves nothing behind.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ephemerid.contract import LaunchEnvironment
from ephemerid.errors import EphemeridError

MARKER = "ephemerid-env.json"
USED = "last-used"
LOCKS = ".locks"
UV_CACHE = ".uv-cache"
TAIL_LINES = 20
INSTALLER_ENV = "EPHEMERID_INSTALLER"  # "uv" (the default where uv is installed) or "pip"
_PASSED = frozenset(
    {"PATH", "HOME", "LANG", "TZ", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "NO_PROXY"}
)
_PASSED_PREFIXES = ("LC_", "PIP_", "UV_")
_PASSED_SUFFIXES = ("_PROXY", "_proxy", "REQUESTS_CA_BUNDLE")

Write = Callable[[bytes], None]


class BuildFailed(EphemeridError):
    """The environment could not be built: the reason holds the installer's last lines."""


@dataclass(frozen=True)
class Ready:
    """An environment ready to run code; ``close()`` lets it go (prune may remove it then)."""

    id: str
    python: Path
    built: bool  # this job built it (False: it was cached, or another job built it)
    seconds: float  # building or waiting for it, the job's setup
    _lock: int

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._lock)


def find_uv() -> str | None:
    """The uv binary: the one the ``uv`` package ships, else one on PATH; None without."""
    try:
        import uv  # an optional binary: pip is the fallback

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` ("3.11") on this machine, or None; "" is this one."""
    if not version or version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable
    return shutil.which(f"python{version}")


def lock_path(root: Path, env_id: str) -> Path:
    return root / LOCKS / env_id


def python_of(folder: Path) -> Path:
    return folder / "bin" / "python"


class Environments:
    """``user``: the OS user the installer runs as (azure-vm's job user: a package's build
    script is the job's code, never root's); None, the runner's own."""

    def __init__(
        self, root: Path, installer: str | None = None, user: pwd.struct_passwd | None = None
    ) -> None:
        self.root, self.user = root, user
        chosen = installer or os.environ.get(INSTALLER_ENV, "")
        self.uv = None if chosen == "pip" else find_uv()

    def prepare(self, plan: LaunchEnvironment, code: Path, work: Path, write: Write) -> Ready:
        """The ready environment for ``plan``, built now if no job built it before.

        Two locks per identity: the job holds the *use* lock shared from here until its code
        ends (prune takes it exclusive, without waiting, so it never removes one in use), and a
        builder takes the *build* lock exclusive. No job ever waits for another job's code.
        """
        started = time.monotonic()
        folder = self.root / plan.id
        (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
        use = _open_lock(lock_path(self.root, plan.id))
        try:
            fcntl.flock(use, fcntl.LOCK_SH)  # only a prune holds it exclusive, briefly
            built = False
            if not (folder / MARKER).is_file():
                built = self._build_once(plan, folder, code, work, write)
            (folder / USED).touch()
        except BaseException:
            os.close(use)
            raise
        return Ready(plan.id, python_of(folder), built, _since(started), use)

    def _build_once(
        self, plan: LaunchEnvironment, folder: Path, code: Path, work: Path, write: Write
    ) -> bool:
        """Build it unless another job does (then wait for that build); whether this one did."""
        build = _open_lock(lock_path(self.root, plan.id).with_suffix(".build"))
        try:
            if not _try_lock(build, fcntl.LOCK_EX):
                write(f"waiting for another job's build of environment {plan.id}\n".encode())
                fcntl.flock(build, fcntl.LOCK_EX)
            if (folder / MARKER).is_file():
                return False
            self._build(plan, folder, code, work, write)
            return True
        finally:
            os.close(build)

    def _build(
        self, plan: LaunchEnvironment, folder: Path, code: Path, work: Path, write: Write
    ) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # a build cut short leaves no marker
        started = time.monotonic()
        installer = "uv" if self.uv else "pip"
        write(f"building environment {plan.id} with {installer}\n".encode())
        try:
            requirements, cwd = self._requirements(plan, code, work)
            self._hand_over(folder)
            for step in self._steps(plan, folder, requirements):
                _run(step, cwd, self._env(), write, self.user)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        marker = {
            "id": plan.id,
            "python": _version_of(folder) or plan.python,
            "inherit": plan.inherit,
            "requirements": plan.requirements,
            "packages": plan.packages,
            "installer": installer,
            "build_s": round(time.monotonic() - started, 3),
            "built_at": datetime.now(UTC).isoformat(),
        }
        (folder / USED).touch()
        (folder / MARKER).write_text(json.dumps(marker))
        write(f"environment {plan.id} built in {marker['build_s']:.1f}s\n".encode())

    def _hand_over(self, folder: Path) -> None:
        """The folders the installer writes, made for its user (when it is not the runner's)."""
        if self.user is None:
            return
        for path in (folder, self.root / UV_CACHE):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _requirements(self, plan: LaunchEnvironment, code: Path, work: Path) -> tuple[Path, Path]:
        """The requirements file to install and the folder its relative paths start from."""
        if plan.requirements:
            path = code / plan.requirements
            return path, path.parent
        listed = work / "environment-requirements.txt"
        listed.write_text("".join(f"{line}\n" for line in plan.packages))
        return listed, code

    def _steps(self, plan: LaunchEnvironment, folder: Path, requirements: Path) -> list[list[str]]:
        base = find_python(plan.python)
        inherit = ["--system-site-packages"] if plan.inherit else []
        python, reqs = str(python_of(folder)), str(requirements)
        if self.uv:
            want = base or plan.python  # uv finds other versions, and never downloads one
            return [
                [self.uv, "venv", "--no-config", *inherit, "--python", want, str(folder)],
                [self.uv, "pip", "install", "--no-config", "--python", python, "-r", reqs],
            ]
        if base is None:
            raise BuildFailed(
                f"environment.python: Python {plan.python} is not on this machine (no "
                f"python{plan.python} on PATH): install it, or remove environment.python"
            )
        options = ["install", "--disable-pip-version-check", "--no-input", "-r", reqs]
        if importlib.util.find_spec("pip") is not None:  # this pip installs there: no ensurepip
            venv = [base, "-m", "venv", "--without-pip", *inherit, str(folder)]
            return [venv, [sys.executable, "-m", "pip", "--python", python, *options]]
        return [[base, "-m", "venv", *inherit, str(folder)], [python, "-m", "pip", *options]]

    def _env(self) -> dict[str, str]:
        env = {n: v for n, v in os.environ.items() if _passed(n)}
        env.update(
            UV_PYTHON_DOWNLOADS="never",
            UV_CACHE_DIR=str(self.root / UV_CACHE),
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        return env


def _version_of(folder: Path) -> str:
    """The Python version a built environment runs, from its ``pyvenv.cfg``."""
    try:
        lines = (folder / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return ""
    values = dict(line.partition("=")[::2] for line in lines)
    found = {k.strip(): v.strip() for k, v in values.items()}
    return found.get("version_info") or found.get("version") or ""


def _passed(name: str) -> bool:
    return name in _PASSED or name.startswith(_PASSED_PREFIXES) or name.endswith(_PASSED_SUFFIXES)


def _run(
    command: list[str],
    cwd: Path,
    env: dict[str, str],
    write: Write,
    user: pwd.struct_passwd | None = None,
) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
    except OSError as exc:
        raise BuildFailed(f"could not start the installer {command[0]}: {exc}") from exc
    assert proc.stdout is not None
    with proc.stdout:
        for line in proc.stdout:
            write(line)
            tail.append(line.decode(errors="replace").rstrip())
    if proc.wait() != 0:
        shown = " ".join(Path(command[0]).name if i == 0 else a for i, a in enumerate(command[:4]))
        last = "\n".join(tail)
        raise BuildFailed(
            f"the environment could not be built: `{shown} ...` exited with code "
            f"{proc.returncode}; its last lines:\n{last}"
        )


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_CREAT | os.O_RDWR, 0o600)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def package_path(work: Path) -> Path:
    """A folder holding only this ephemerid package (a link to it), for the job's PYTHONPATH:
    code in an environment imports ``ephemerid.track`` from the runner's own release without
    seeing the runner's other packages."""
    folder = work / ".ephemerid-path"
    link = folder / "ephemerid"
    if not link.exists():
        folder.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    return folder

"""Helpers that drive jobs on the real local compute the way the event loop does.

Nothing here stands in for ephemerid: jobs are submitted through the service, run by the real
runner in a real subprocess, and completed when their ``result.json`` lands, as the local event
source would do it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ephemerid import names
from ephemerid.app import build_service
from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.record import JobRecord
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.testing.settle import SETTLED_COMPUTE, settle

T = TypeVar("T")
DONE_COMPUTE = SETTLED_COMPUTE


def wait_for(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def write_script(code_dir: Path, body: str, name: str = "job.py") -> str:
    (code_dir / name).write_text(textwrap.dedent(body).lstrip())
    return name


def spec_for(code_dir: Path, entrypoint: str = "job.py", **fields: Any) -> JobSpec:
    return JobSpec.model_validate(
        {"kind": "train", "code": str(code_dir), "entrypoint": entrypoint, **fields}
    )


def finish(service: Service, job_id: str, timeout: float = 60.0) -> JobRecord:
    """Complete the job when its result lands, until it is terminal and its compute given back."""
    return settle(service, [job_id], timeout=timeout)[0]


def run(service: Service, spec: JobSpec, timeout: float = 60.0, **submit: Any) -> JobRecord:
    return finish(service, service.submit(spec, **submit).job.id, timeout)


def text_of(store: ArtifactStore, key: str) -> str:
    return get_bytes(store, key).decode("utf-8")


def log_of(service: Service, job_id: str) -> str:
    return text_of(service.artifacts, names.run_key(job_id, names.LOG_FILE))


def upload(store: ArtifactStore, key: str, data: bytes) -> str:
    put_bytes(store, key, data)
    return store.uri(key)


# -- processes --------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie has ended: it only awaits its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def session_of(sid: int) -> list[int]:
    """Live processes whose session id is ``sid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process in ``proc``'s session (it started one), then reap ``proc``."""
    for pid in session_of(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_gone(pids: list[int], timeout: float = 15.0) -> None:
    wait_for(lambda: not any(alive(p) for p in pids), f"processes {pids} to end", timeout)


# -- a script that holds until the test lets it go --------------------------------------------

HOLD_SCRIPT = """
import json, os, pathlib, sys, time

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
gate = pathlib.Path(params["gate"])
with open(gate / "runs.txt", "a") as runs:
    runs.write(f"{os.getpid()}\\n")
(gate / "pid.tmp").write_text(str(os.getpid()))
os.replace(gate / "pid.tmp", gate / "pid")
print("holding until the gate opens", flush=True)
deadline = time.monotonic() + 90
while not (gate / "open").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("gate opened: done", flush=True)
"""


class Gate:
    """A folder a held job reports to: its pid, each start (runs.txt), and when to go on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    @property
    def params(self) -> dict[str, str]:
        return {"gate": str(self.path)}

    def pid(self, timeout: float = 30.0) -> int:
        pidfile = self.path / "pid"
        wait_for(pidfile.exists, f"the held script to start ({pidfile})", timeout)
        return int(pidfile.read_text())

    def starts(self) -> int:
        runs = self.path / "runs.txt"
        return len(runs.read_text().splitlines()) if runs.exists() else 0

    def open(self) -> None:
        (self.path / "open").touch()


def held_spec(code_dir: Path, gate: Gate, **fields: Any) -> JobSpec:
    write_script(code_dir, HOLD_SCRIPT, "hold.py")
    params = {**gate.params, **fields.pop("params", {})}
    return spec_for(code_dir, "hold.py", params=params, **fields)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextmanager
def cleaned_up(service: Service) -> Iterator[Service]:
    """``service``, left with no job running and no compute, then closed."""
    try:
        yield service
    finally:
        for job in service.store.list():
            service.release(job) if job.state.terminal else service.cancel(job.id, "test ended")
        for backend in service.backends.values():
            for handle in backend.list_owned():
                backend.teardown(handle)
        service.close()


def service_with(settings: Settings, **changes: Any) -> AbstractContextManager[Service]:
    """A service on ``settings`` with ``changes``, cleaned up after."""
    return cleaned_up(build_service(settings.model_copy(update=changes)))


def json_document(stream: Iterable[str]) -> Any:
    """The JSON document a command prints first on ``stream`` (e.g. `eph dev --json`'s wiring),
    read up to its own closing brace while the command keeps running."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.rstrip() == "}":
            break
    return json.loads("".join(lines))

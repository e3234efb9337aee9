"""`eph demo`: the main job on the embedded default, told step by step.

A training CSV lands in the local bucket's ``incoming/train/``; the example rule makes a train
job; it runs on local compute (GPU if one is visible), and model version 1 is registered and
promoted. Then a scoring CSV lands in ``incoming/score/`` and is scored with the promoted model.
The closing table shows what each job held and for how long, and that no compute is left.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from types import ModuleType

from rich.console import Console

from ephemerid import names
from ephemerid.app import build_service
from ephemerid.cli.render import dump, jobs_table
from ephemerid.errors import BadInput
from ephemerid.record import ComputeState, JobRecord
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.watch import LocalEvents

MARKER = ".ephemerid-demo"
WAIT_S = 90.0


def examples_dir() -> Path:
    """The examples shipped in the wheel, or those of a source checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "_examples", here.parents[3] / "examples"):
        if (candidate / "ephemerid.yaml").is_file():
            return candidate
    raise BadInput("the demo's examples are missing: reinstall ephemerid")


def run_demo(home: Path, console: Console, as_json: bool) -> bool:
    home = _fresh_workspace(home.resolve())
    project = home / "project"
    shutil.copytree(examples_dir(), project, ignore=shutil.ignore_patterns("__pycache__"))
    settings = Settings.from_env(
        {k: v for k, v in os.environ.items() if k in ("EPHEMERID_STORE", "EPHEMERID_ARTIFACTS")},
        home=home / "state",
        rules_path=project / "ephemerid.yaml",
        heartbeat_s=1.0,
        grace_s=5.0,
    )
    service = build_service(settings)
    events = LocalEvents(service, Rules.load(settings.rules_path))
    make_data = _load(project / "tabular" / "make_data.py")
    say = (lambda text: None) if as_json else console.print

    say(f"[bold]ephemerid demo[/] in {home}")
    say(f"bucket: {service.artifacts.root_uri}   rules: {settings.rules_path}")
    train = _drop(
        service,
        events,
        console,
        as_json,
        make_data,
        "incoming/train/customers.csv",
        rows=20_000,
        seed=0,
        with_label=True,
    )
    if train.model_version:
        say(f"model registered: [bold]{train.model_version}[/] (alias production)")
    score = _drop(
        service,
        events,
        console,
        as_json,
        make_data,
        "incoming/score/customers.csv",
        rows=5_000,
        seed=1,
        with_label=False,
    )
    jobs = [train, score]
    live = _live_compute(service)
    outputs = {j.id: names.run_key(j.id, names.OUTPUTS_DIR) + "/" for j in jobs}
    ok = all(j.state.value == "SUCCEEDED" for j in jobs) and live == 0
    if as_json:
        dump(
            {
                "ok": ok,
                "jobs": [j.to_json() for j in jobs],
                "outputs": outputs,
                "live_compute": live,
                "bucket": service.artifacts.root_uri,
            }
        )
    else:
        console.print(jobs_table(jobs, title="demo jobs", outputs=outputs))
        console.print(f"outputs are under {service.artifacts.uri('')}")
        console.print(f"live compute: [bold]{live}[/]")
        for job in jobs:
            if job.reason:
                console.print(f"[red]{job.id}[/]: {job.reason}")
    service.store.close()
    return ok


def _fresh_workspace(home: Path) -> Path:
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).exists():
            raise BadInput(f"{home} exists and is not a demo folder: pass --home with a new path")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("made by `eph demo`; safe to delete\n")
    return home


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("ephemerid_demo_data", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drop(
    service: Service,
    events: LocalEvents,
    console: Console,
    quiet: bool,
    make_data: ModuleType,
    key: str,
    **data: object,
) -> JobRecord:
    """Write a CSV into the bucket as a user would, then let the events run to the job's end."""
    staging = service.settings.home / "staging.csv"
    make_data.make_dataset(staging, data.pop("rows"), **data)
    with staging.open("rb") as stream:
        service.artifacts.write(key, stream)
    staging.unlink()
    if not quiet:
        console.print(f"\n[bold]dropped[/] {service.artifacts.uri(key)}")
    job_ids: list[str] = []

    def done() -> bool:
        for delivery in events.poll():
            job_ids.extend(s.job.id for s in delivery.submitted)
        if not job_ids:
            return False
        job = service.store.get(job_ids[0])
        status.update(
            f"{job.id}: {job.state.value}, compute {job.compute_state.value}"
            f"  {_last_line(service, job.id)}"
        )
        return job.state.terminal and job.compute_state in (
            ComputeState.NONE,
            ComputeState.RELEASED,
        )

    with console.status(f"waiting for a rule to pick up {key}", spinner="dots") as status:
        if quiet:
            status.stop()
        deadline = time.monotonic() + WAIT_S
        while not done():
            if time.monotonic() > deadline:
                raise BadInput(f"no job finished for {key} within {WAIT_S:.0f}s")
            time.sleep(0.2)
    job = service.store.get(job_ids[0])
    if not quiet:
        style = "green" if job.state.value == "SUCCEEDED" else "red"
        console.print(
            f"[{style}]{job.id} {job.state.value}[/] in {job.runtime_s or 0:.1f}s, "
            f"compute {job.compute_state.value}"
        )
    return job


def _last_line(service: Service, job_id: str) -> str:
    try:
        with service.artifacts.open_read(names.run_key(job_id, names.LOG_FILE)) as stream:
            stream.seek(0, 2)
            stream.seek(max(stream.tell() - 400, 0))
            lines = stream.read().decode("utf-8", "replace").strip().splitlines()
    except Exception:
        return ""
    return lines[-1][:100] if lines else ""


def _live_compute(service: Service) -> int:
    owned = sum(len(b.list_owned()) for b in service.backends.values())
    held = [
        j
        for j in service.store.list()
        if j.compute_state in (ComputeState.REQUESTED, ComputeState.LIVE)
    ]
    return owned + len(held)

"""`eph demo`: the main job on the embedded default, told step by step.

A training CSV lands in the local bucket's ``incoming/train/``; the dev host delivers it to the
function app's ``on_blob_created``, whose rule makes a train job; it runs on local compute (GPU
if one is visible), its ``result.json`` goes to ``on_run_result``, and model version 1 is
registered and promoted. Then a scoring Parquet file lands in ``incoming/score/`` and is scored
with the promoted model under the batch harness (``predict.py``'s ``load``/``predict``), which
writes Parquet predictions and their manifest. The closing table shows what each job held and
for how long, and that no compute is left. The clock is left out: the example's nightly schedule
must not add a third job.

The demo works in the home every command uses (``--home``, ``EPHEMERID_HOME``, else
``./.ephemerid``): its jobs, models and bucket are there, so ``eph list`` afterwards shows them;
its copy of the examples is in ``<home>/demo/``, made afresh each run.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from rich.console import Console

from ephemerid import names
from ephemerid.cli.render import dump, jobs_table
from ephemerid.errors import BadInput, require_extra
from ephemerid.record import ComputeState, JobRecord
from ephemerid.service import Service

if TYPE_CHECKING:
    from ephemerid.devhost import DevHost, Invocation

MARKER = ".ephemerid-demo"  # in <home>/demo/: the demo's own folder, safe to make afresh
STATE = ("jobs.db", "bucket")  # what says a folder is an ephemerid home
WAIT_S = 90.0
POLL_S = 0.1
# The demo's own settings win; of the caller's, only where the store and the bucket live. The
# home is the dev host's to set (the one the demo was given): never unset it under the host.
KEEP = ("EPHEMERID_HOME", "EPHEMERID_STORE", "EPHEMERID_ARTIFACTS", "EPHEMERID_STORAGE")


def examples_dir() -> Path:
    """The examples shipped in the wheel, or those of a source checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "_examples", here.parents[3] / "examples"):
        if (candidate / "ephemerid.yaml").is_file():
            return candidate
    raise BadInput("the demo's examples are missing: reinstall ephemerid")


def run_demo(home: Path, console: Console, as_json: bool) -> bool:
    require_extra("azure.functions", "devhost")
    from ephemerid.devhost import DevHost
    from ephemerid.devhost.functions import ephemerid_app

    home = home.resolve()
    project = _fresh_workspace(home) / "project"
    shutil.copytree(examples_dir(), project, ignore=shutil.ignore_patterns("__pycache__"))
    make_data = _load(project / "tabular" / "make_data.py")
    say = (lambda text: None) if as_json else console.print
    settings = _settings(project)
    with DevHost(
        ephemerid_app(),
        home=home,
        settings=settings,
        port=None,
        timers=False,
        interval=POLL_S,
        on_invocation=None if as_json else _show(console),
    ) as host:
        service = host.service
        say(f"[bold]ephemerid demo[/] in the home {home}, through the dev host")
        say(f"bucket: {service.bucket_uri}   rules: {settings['EPHEMERID_RULES']}")
        train = _drop(
            host,
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
            host,
            console,
            as_json,
            make_data,
            "incoming/score/customers.parquet",
            rows=5_000,
            seed=1,
            with_label=False,
        )
        jobs = [train, score]
        live = _live_compute(service)
        ok = all(j.state.value == "SUCCEEDED" for j in jobs) and live == 0
        _report(service, console, as_json, jobs, live, ok, home)
    return ok


def _settings(project: Path) -> dict[str, str | None]:
    """The demo's app settings: its rules, quick heartbeats; other EPHEMERID_* unset."""
    settings: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith("EPHEMERID_") and k.split("__")[0] not in KEEP
    }
    settings.update(
        EPHEMERID_RULES=str(project / "ephemerid.yaml"),
        EPHEMERID_HEARTBEAT_S="1.0",
        EPHEMERID_GRACE_S="5.0",
    )
    return settings


def _show(console: Console) -> Callable[[Invocation], None]:
    def show(call: Invocation) -> None:
        outcome = "" if call.ok else f" [red]failed: {call.error}[/]"
        console.print(f"  [dim]dev host -> {call.function}({call.detail}){outcome}[/]")

    return show


def _report(
    service: Service,
    console: Console,
    as_json: bool,
    jobs: list[JobRecord],
    live: int,
    ok: bool,
    state: Path,
) -> None:
    outputs = {j.id: names.run_key(j.id, names.OUTPUTS_DIR) + "/" for j in jobs}
    if as_json:
        dump(
            {
                "ok": ok,
                "jobs": [j.to_json() for j in jobs],
                "outputs": outputs,
                "live_compute": live,
                "bucket": service.bucket_uri,
                "home": str(state),
            }
        )
        return
    console.print(jobs_table(jobs, title="demo jobs"))
    for job_id, key in outputs.items():
        console.print(f"outputs of {job_id}: {service.uri(key)}")
    console.print(f"live compute: [bold]{live}[/]")
    console.print(
        f"the demo's jobs, models and bucket are in its home {state}: `eph list --home {state}` "
        "(or `eph list` with the same EPHEMERID_HOME, or from this folder) shows them"
    )
    for job in jobs:
        if job.reason:
            console.print(f"[red]{job.id}[/]: {job.reason}")


def _fresh_workspace(home: Path) -> Path:
    """``<home>/demo``, made afresh; a home holding anything but ephemerid state is refused."""
    if home.is_dir() and not any((home / name).exists() for name in (*STATE, "demo")):
        strangers = sorted(p.name for p in home.iterdir())
        if strangers:
            shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
            raise BadInput(
                f"{home} is not a demo folder or an ephemerid home: it holds {shown}; "
                "pass --home with a new folder (or an ephemerid home)"
            )
    workspace = home / "demo"
    if workspace.exists():
        if not (workspace / MARKER).exists():
            raise BadInput(
                f"{workspace} was not made by `eph demo`: move it, or pick another --home"
            )
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    (workspace / MARKER).write_text("made by `eph demo`; safe to delete\n")
    return workspace


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("ephemerid_demo_data", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drop(
    host: DevHost,
    console: Console,
    quiet: bool,
    make_data: ModuleType,
    key: str,
    **data: object,
) -> JobRecord:
    """Write a data file (CSV or Parquet, by ``key``'s suffix) into the bucket as a user would,
    then let the dev host run to the job's end."""
    service = host.service
    staging = service.settings.home / f"staging{Path(key).suffix}"
    make_data.make_dataset(staging, data.pop("rows"), **data)
    with staging.open("rb") as stream:
        stat = service.artifacts.write(key, stream)
    staging.unlink()
    if not quiet:
        console.print(f"\n[bold]dropped[/] {service.uri(key)}")
    # the idempotency key every job made from this upload has (events.on_blob_created)
    made_from_it = f"blob:{service.uri(key)}@{stat.etag}#"

    def done() -> bool:
        job = next((j for j in service.list() if j.key.startswith(made_from_it)), None)
        if job is None:
            return False
        found.append(job)
        status.update(
            f"{job.id}: {job.state.value}, compute {job.compute_state.value}"
            f"  {_last_line(service, job.id)}"
        )
        return job.state.terminal and job.compute_state in (
            ComputeState.NONE,
            ComputeState.RELEASED,
        )

    found: list[JobRecord] = []
    with console.status(f"waiting for the dev host to deliver {key}", spinner="dots") as status:
        if quiet:
            status.stop()
        if not host.run(until=done, timeout=WAIT_S):
            raise BadInput(f"no job finished for {key} within {WAIT_S:.0f}s")
    job = found[-1]
    if not quiet:
        style = "green" if job.state.value == "SUCCEEDED" else "red"
        console.print(
            f"[{style}]{job.id} {job.state.value}[/] in {job.runtime_s or 0:.1f}s, "
            f"compute {job.compute_state.value}"
        )
    return job


def _last_line(service: Service, job_id: str) -> str:
    """The log's last line, read from its end (blob streams cannot seek)."""
    key = names.run_key(job_id, names.LOG_FILE)
    stat = service.artifacts.stat(key)
    if stat is None:
        return ""
    with service.artifacts.open_read(key, max(stat.size - 400, 0)) as stream:
        lines = stream.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:100] if lines else ""


def _live_compute(service: Service) -> int:
    owned = service.held_compute()
    held = [
        j for j in service.list() if j.compute_state in (ComputeState.REQUESTED, ComputeState.LIVE)
    ]
    return owned + len(held)

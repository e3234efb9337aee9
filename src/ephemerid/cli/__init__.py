"""`ephemerid` / `eph`: submit jobs, watch them, and look after models and compute.

Exit codes: 0 ok, 1 a job failed (or an operation did), 2 bad input.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ephemerid import __version__
from ephemerid.agent.driver import Driver, keep_running
from ephemerid.cli.agent import agent_app, schedules
from ephemerid.cli.cost import cost
from ephemerid.cli.envs import envs_app
from ephemerid.cli.follow import Follow, JsonLines, TextView, View
from ephemerid.cli.local import demo, dev
from ephemerid.cli.models import models_app
from ephemerid.cli.options import Home, Json, close_services, console, service_for
from ephemerid.cli.outputs import outputs
from ephemerid.cli.render import dump, job_detail, jobs_table
from ephemerid.cli.runs import runs_app
from ephemerid.cli.serve import serve
from ephemerid.cli.sweeps import exit_code, submit_sweep, sweep_app, sweep_detail
from ephemerid.cli.ui import ui
from ephemerid.client import spec_data
from ephemerid.errors import BadInput, EphemeridError
from ephemerid.reads import live_json
from ephemerid.reaper import reap
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service
from ephemerid.spec import read_document, validate_spec
from ephemerid.sweeps.state import view
from ephemerid.testing.settle import settle

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
DETACHED = 130  # Ctrl-C while following: the job goes on, the command stops
SCRIPT_ARGS: list[str] = []  # what followed `--` on the command line (main sets it)
app.add_typer(models_app, name="models")
app.add_typer(agent_app, name="agent")
app.add_typer(envs_app, name="envs")
app.add_typer(runs_app, name="runs")
app.add_typer(sweep_app, name="sweep")
_service = service_for


@app.command()
def submit(
    spec_file: Annotated[Path | None, typer.Argument(help="A job spec (YAML or JSON).")] = None,
    code: Annotated[Path | None, typer.Option(help="Directory holding the entrypoint.")] = None,
    entrypoint: Annotated[str | None, typer.Option(help="Script to run, e.g. train.py.")] = None,
    kind: Annotated[str, typer.Option(help="train or predict.")] = "train",
    gpus: Annotated[int | None, typer.Option(help="GPUs to rent (per node).")] = None,
    nodes: Annotated[
        int | None, typer.Option(help="Nodes for a distributed job (azure-ml).")
    ] = None,
    param: Annotated[list[str] | None, typer.Option(help="k=v (repeatable).")] = None,
    input_: Annotated[
        list[str] | None, typer.Option("--input", help="name=URI (repeatable).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="For predict: name@alias or name:version.")
    ] = None,
    register: Annotated[str | None, typer.Option(help="For train: name[@alias].")] = None,
    max_runtime: Annotated[str | None, typer.Option(help="e.g. 30m, 2h.")] = None,
    backend: Annotated[str | None, typer.Option(help="Compute backend, e.g. local.")] = None,
    key: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    detach: Annotated[bool, typer.Option(help="Return once the job is started.")] = False,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Submit a spec file, or flags: eph submit --code . --entrypoint train.py --gpus 1.

    Arguments after ``--`` go to the script: ``eph submit ... -- --epochs 3`` (they replace the
    spec's ``args``). Ctrl-C while it follows the job detaches (exit code 130): the job keeps
    running; ``eph logs -f JOB`` follows it again and ``eph cancel JOB`` stops it. A sweep file
    (``kind: sweep``) is submitted as `eph sweep submit` does.
    """
    if spec_file is not None and _is_sweep(spec_file):
        raise typer.Exit(exit_code(submit_sweep(spec_file, key, home, json_, detach)))
    data = _spec_data(
        spec_file,
        code,
        entrypoint,
        kind,
        gpus,
        nodes,
        param or [],
        input_ or [],
        model,
        register,
        max_runtime,
        backend,
    )
    if SCRIPT_ARGS:
        data["args"] = list(SCRIPT_ARGS)
    spec = validate_spec(data, str(spec_file) if spec_file else "job from flags")
    service = _service(home, create=True)
    owner = f"cli:{getpass.getuser()}"  # the machine's own user: unscoped, as admin
    submitted = service.submit(spec, key=key, source="cli", owner=owner, admin=True)
    job = submitted.job
    if detach and job.open:  # the agent completes it (while following: _follow starts it)
        keep_running(service, _warn)
    if not json_:
        verb = "submitted" if submitted.created else "already submitted (same key)"
        console.print(f"{verb}: [bold]{job.id}[/] {job.state.value} {job.reason}")
    if not detach:
        job = _follow(service, job, TextView(console, show_logs=not json_))
    if json_:
        dump(job.to_json())
    elif not detach:
        job_detail(console, job, service.progress(job))
    raise typer.Exit(_exit_code(job))


def _is_sweep(spec_file: Path) -> bool:
    data = read_document(spec_file)
    return isinstance(data, dict) and data.get("kind") == "sweep"


def _exit_code(job: JobRecord) -> int:
    """1 for a job that ended other than SUCCEEDED (failed, timed out, cancelled), else 0."""
    return 1 if job.state.terminal and job.state is not JobState.SUCCEEDED else 0


def _spec_data(
    spec_file: Path | None,
    code: Path | None,
    entrypoint: str | None,
    kind: str,
    gpus: int | None,
    nodes: int | None,
    params: list[str],
    inputs: list[str],
    model: str | None,
    register: str | None,
    max_runtime: str | None,
    backend: str | None,
) -> dict[str, Any]:
    if spec_file is None and (code is None or entrypoint is None):
        raise BadInput("give a spec file, or both --code DIR and --entrypoint SCRIPT")
    data = spec_data(spec_file, code, entrypoint, None if spec_file else kind)
    data.setdefault("params", {}).update(_pairs(params, "--param", typed=True))
    data.setdefault("inputs", {}).update(_pairs(inputs, "--input"))
    compute = data.setdefault("compute", {})
    flags = {"gpus": gpus, "nodes": nodes, "max_runtime": max_runtime, "backend": backend}
    for name, value in flags.items():
        if value is not None:
            compute[name] = value
    if model:
        data["model"] = model
    if register:
        name, _, alias = register.partition("@")
        data["register_as"] = {"name": name, **({"alias": alias} if alias else {})}
    return data


def _pairs(items: list[str], flag: str, typed: bool = False) -> dict[str, Any]:
    pairs: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise BadInput(f"{flag} '{item}' must look like name=value")
        if name in pairs:
            raise BadInput(f"{flag} '{name}' is given twice: give each name once")
        pairs[name] = _scalar(value) if typed else value
    return pairs


def _scalar(text: str) -> Any:
    """A value that is JSON (``3``, ``1.10``, ``true``, ``null``, ``[1, 2]``) is that value;
    anything else stays the string as written (``yes``, ``0x10``, ``a; b``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


def _follow(service: Service, job: JobRecord, view: View) -> JobRecord:
    """Wait for the end, showing the log and progress as they grow; the home's agent moves the
    job on. An agent that is gone (crashed, stopped) is started again; where none can start,
    this command drives the job itself.
    """
    following = Follow(service, job, view)
    driver = Driver(service, _warn)

    def tick() -> None:
        following.tick()
        driver.tick(job.id)

    try:
        [job] = settle(service, [job.id], timeout=None, on_tick=tick, poll_s=0.3, drive=False)
        following.end(job)
    except KeyboardInterrupt:
        following.close()
        console.print(
            f"\ndetached: {job.id} keeps running; `eph logs -f {job.id}` follows it, "
            f"`eph cancel {job.id}` stops it"
        )
        raise typer.Exit(DETACHED) from None
    finally:
        following.close()
    return job


def _print_log(service: Service, job_id: str, offset: int, rank: int = 0) -> int:
    data = service.read_log(job_id, offset, rank)
    if data:
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()
    return offset + len(data)


@app.command()
def status(job_id: str, home: Home = None, json_: Json = False) -> None:
    """State, timings, compute and metrics of one job."""
    service = _service(home)
    job = service.get(job_id)
    progress = service.progress(job)
    if json_:
        dump({**live_json(job, progress), **({"sweep": view(job)} if job.sweep else {})})
    else:
        job_detail(console, job, progress)
        if job.sweep is not None:
            sweep_detail(console, job)


@app.command("list")
def list_jobs(
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many, newest first.")
    ] = None,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Jobs, newest first."""
    states = [JobState.parse(s, "--state") for s in state] if state else None
    service = _service(home)
    jobs = service.list(states)[:limit]
    if json_:
        dump([j.to_json() for j in jobs])
    else:
        console.print(jobs_table(jobs, progress=service.progress))


@app.command()
def logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the job ends.")
    ] = False,
    rank: Annotated[
        int, typer.Option(min=0, help="A distributed job's rank (0: the job's log).")
    ] = 0,
    home: Home = None,
    json_: Json = False,
) -> None:
    """The job's output (stdout and stderr of the entrypoint, and the runner's notes).

    With --follow --json: one JSON object per line (log, metric, state, and a last end).
    """
    if follow and rank:
        raise BadInput("--follow streams rank 0's log: drop --rank, or --follow")
    service = _service(home)
    job = service.get(job_id)
    ranks = job.spec.compute.nodes * max(job.spec.compute.gpus, 1)
    if rank >= ranks and not service.read_log(job.id, 0, rank):
        raise BadInput(
            f"--rank {rank}: job {job.id} ran as {ranks} process(es), ranks 0 to {ranks - 1}, "
            f"and has no log for rank {rank}"
        )
    if follow:
        job = _follow(service, job, JsonLines() if json_ else TextView(console))
        raise typer.Exit(_exit_code(job))
    elif json_:
        text = service.read_log(job.id, 0, rank).decode("utf-8", "replace")
        dump({"job": job.id, "state": job.state.value, "rank": rank, "log": text})
    else:
        _print_log(service, job.id, 0, rank)


@app.command()
def cancel(job_id: str, home: Home = None, json_: Json = False) -> None:
    """Stop a job and give its compute back."""
    service = _service(home)
    job = service.cancel(job_id)
    if json_:
        dump(job.to_json())
    else:
        console.print(f"{job.id}: {job.state.value}, compute {job.compute_state.value}")


@app.command("reap")
def reap_command(home: Home = None, json_: Json = False) -> None:
    """Finish what events missed and give back compute no job owns (the timer does this too)."""
    actions = reap(_service(home))
    if json_:
        dump({"actions": actions})
    else:
        for action in actions or ["nothing to do"]:
            console.print(action)


@app.command()
def rejected(home: Home = None, json_: Json = False) -> None:
    """Requests that could not become jobs (bad messages, blob names), with the reason."""
    found = _service(home).rejections()
    if json_:
        dump([r.to_json() for r in found])
        return
    for item in found or []:
        console.print(f"{item.at}  {item.source}:{item.id}  [red]{item.reason}[/]")
    if not found:
        console.print("no rejected requests")


app.command()(schedules)
app.command()(dev)
app.command()(demo)
app.command()(outputs)
app.command()(ui)
app.command()(cost)
app.command()(serve)


def _version(value: bool) -> None:
    if value:
        print(f"ephemerid {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """`ephemerid` / `eph`: submit jobs, watch them, and look after models and compute."""


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["submit"] and "--" in args:  # the script's own arguments
        cut = args.index("--")
        args, SCRIPT_ARGS[:] = args[:cut], args[cut + 1 :]
    try:
        app(args=args, prog_name="eph")  # typer exits 2 on usage errors, else typer.Exit's code
    except EphemeridError as exc:
        if "--json" in args:  # a script reading stdout gets the error as JSON too
            dump({"error": str(exc), "kind": type(exc).__name__, "exit_code": exc.exit_code})
        console.print(f"[red]error:[/] {exc}")
        sys.exit(exc.exit_code)
    finally:
        close_services()

"""`ephemerid` / `eph`: submit jobs, watch them, and look after models and compute.

Exit codes: 0 ok, 1 a job failed (or an operation did), 2 bad input.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from rich.console import Console

from ephemerid import names
from ephemerid.app import build_service
from ephemerid.cli.render import dump, job_detail, jobs_table
from ephemerid.errors import BadInput, EphemeridError, require_extra
from ephemerid.reaper import reap
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import ModelRef, load_spec, validate_spec
from ephemerid.testing.settle import settle

if TYPE_CHECKING:
    from ephemerid.devhost import DevHost, Invocation

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
models_app = typer.Typer(help="Model versions and aliases.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]
Home = Annotated[
    Path | None, typer.Option("--home", envvar="EPHEMERID_HOME", help="Local state folder.")
]


def _service(home: Path | None) -> Service:
    return build_service(Settings.from_env(home=home))


def _catch_up(service: Service) -> None:
    """Locally nothing runs between commands: handle results and timers that came meanwhile."""
    reap(service)


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
    """Submit a spec file, or flags: eph submit --code . --entrypoint train.py --gpus 1."""
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
    spec = validate_spec(data, str(spec_file) if spec_file else "job from flags")
    service = _service(home)
    submitted = service.submit(spec, key=key, source="cli")
    job = submitted.job
    if not json_:
        verb = "submitted" if submitted.created else "already submitted (same key)"
        console.print(f"{verb}: [bold]{job.id}[/] {job.state.value} {job.reason}")
    if not detach:
        job = _follow(service, job, show_logs=not json_)
    if json_:
        dump(job.to_json())
    elif not detach:
        job_detail(console, job)
    raise typer.Exit(1 if job.state.terminal and job.state is not JobState.SUCCEEDED else 0)


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
    if spec_file is not None:
        data = load_spec(spec_file).model_dump(mode="json", exclude_none=True)
        code_dir = Path(data["code"])
        if "://" not in data["code"] and not code_dir.is_absolute():
            data["code"] = str((spec_file.parent / code_dir).resolve())
    else:
        if code is None or entrypoint is None:
            raise BadInput("give a spec file, or both --code DIR and --entrypoint SCRIPT")
        data = {"kind": kind, "code": str(code.resolve()), "entrypoint": entrypoint}
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
        pairs[name] = _scalar(value) if typed else value
    return pairs


def _scalar(text: str) -> Any:
    """Numbers and booleans become JSON numbers and booleans; anything else stays the string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, bool | int | float) else text


def _follow(service: Service, job: JobRecord, show_logs: bool) -> JobRecord:
    """Wait for the end (handling the result here) and stream the log while it runs."""
    offset = 0

    def tick() -> None:
        nonlocal offset
        if show_logs:
            offset = _print_log(service, job.id, offset)
        _catch_up(service)

    try:
        [job] = settle(service, [job.id], timeout=None, on_tick=tick, poll_s=0.3)
    except KeyboardInterrupt:
        console.print(f"\ndetached: {job.id} keeps running; `eph cancel {job.id}` stops it")
        return service.get(job.id)
    if show_logs:
        _print_log(service, job.id, offset)
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
    _catch_up(service)
    job = service.get(job_id)
    if json_:
        dump(job.to_json())
    else:
        job_detail(console, job)


@app.command("list")
def list_jobs(
    state: Annotated[list[str] | None, typer.Option(help="Only these states.")] = None,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Jobs, newest first."""
    try:
        states = [JobState(s.upper()) for s in state] if state else None
    except ValueError as exc:
        raise BadInput(
            f"--state: {exc}; use one of {', '.join(s.value for s in JobState)}"
        ) from exc
    service = _service(home)
    _catch_up(service)
    jobs = service.list(states)
    if json_:
        dump([j.to_json() for j in jobs])
    else:
        console.print(jobs_table(jobs))


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
    """The job's output (stdout and stderr of the entrypoint, and the runner's notes)."""
    if follow and rank:
        raise BadInput("--follow streams rank 0's log: drop --rank, or --follow")
    service = _service(home)
    job = service.get(job_id)
    if json_:
        text = service.read_log(job.id, 0, rank).decode("utf-8", "replace")
        dump({"job": job.id, "state": job.state.value, "rank": rank, "log": text})
    elif follow:
        _follow(service, job, show_logs=True)
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


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model.")] = None,
    home: Home = None,
    json_: Json = False,
) -> None:
    """Registered models, their versions and aliases."""
    registry = _service(home).models
    found = []
    for model in [name] if name else registry.names():
        aliases = registry.aliases(model)
        for version in registry.versions(model):
            tags = sorted(a for a, v in aliases.items() if v == version.version)
            found.append({**version.__dict__, "aliases": tags})
    if json_:
        dump(found)
        return
    from rich.table import Table

    table = Table(title="models")
    for column in ("model", "version", "aliases", "job", "metrics", "state"):
        table.add_column(column)
    for item in found:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(item["metrics"].items()))
        table.add_row(
            item["name"],
            str(item["version"]),
            ", ".join(item["aliases"]),
            item["job_id"],
            metrics,
            item["state"],
        )
    console.print(table)


@models_app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="name:version, e.g. churn:3")],
    alias: Annotated[str, typer.Argument(help="e.g. production")],
    home: Home = None,
    json_: Json = False,
) -> None:
    """Point an alias at a version; predict jobs that name the alias use it from then on."""
    try:
        parsed = ModelRef.parse(ref)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    if parsed.version is None:
        raise BadInput(f"'{ref}': promote takes name:version, e.g. {parsed.name}:3")
    version = _service(home).models.promote(parsed.name, parsed.version, alias)
    if json_:
        dump({"model": version.name, "version": version.version, "alias": alias})
    else:
        console.print(f"{version.name}@{alias} -> version {version.version}")


@app.command()
def dev(
    app_path: Annotated[
        Path | None,
        typer.Option(
            "--app",
            help="function_app.py or its folder (default: ./function_app.py, else "
            "ephemerid's own functions).",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="HTTP port on 127.0.0.1; 0 picks a free one.")] = 7071,
    storage: Annotated[
        str, typer.Option(help="local (a folder and SQLite) or azurite (Blob, Queue, Table).")
    ] = "local",
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 0.5,
    home: Home = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the wiring as JSON to stdout, then keep running.")
    ] = False,
) -> None:
    """Run the function app's functions here: the bucket, queues, a clock and HTTP feed them."""
    require_extra("azure.functions", "devhost")
    from ephemerid.devhost import DevHost

    state = Settings.from_env(home=home).home
    try:  # Ctrl-C at any moment stops it cleanly: the host and Azurite are closed on the way out
        with (
            storage_env(storage),
            DevHost(
                app_path,
                home=state,
                port=port,
                interval=interval,
                on_job=_print_job,
                on_invocation=_print_call,
            ) as host,
        ):
            _show_wiring(host, json_)
            host.run()
    except KeyboardInterrupt:
        console.print("stopped")


def _print_call(call: Invocation) -> None:
    outcome = "" if call.ok else f" [red]failed: {call.error}[/]"
    console.print(f"[dim]{call.function}({call.detail}) {call.seconds:.2f}s[/]{outcome}")


def _print_job(job: JobRecord) -> None:
    console.print(f"{job.id} {job.state.value} compute={job.compute_state.value} {job.reason}")


def _show_wiring(host: DevHost, as_json: bool) -> None:
    """What feeds each function, then the key, once; events follow as they come."""
    from ephemerid.devhost.keys import KEYS_FILE
    from ephemerid.devhost.wiring import wiring_json

    if as_json:
        dump({"functions": wiring_json(host.wiring), "url": host.url, "function_key": host.key})
        sys.stdout.flush()
    else:
        from rich.table import Table

        table = Table(title=f"dev host: {host.service.bucket_uri}")
        for column in ("function", "trigger", "source", "detail"):
            table.add_column(column, overflow="fold")
        for wire in host.wiring:
            table.add_row(wire.function, wire.trigger, wire.source, wire.detail)
        console.print(table)
        if host.key:
            console.print(f"function key: {host.key}  (kept in {host.home / KEYS_FILE})")
    console.print("job events follow; Ctrl-C stops")


@app.command()
def demo(
    home: Annotated[Path, typer.Option(help="Folder for the demo's bucket and state.")] = Path(
        ".ephemerid-demo"
    ),
    storage: Annotated[
        str, typer.Option(help="local (a folder and SQLite) or azurite (Blob and Table).")
    ] = "local",
    json_: Json = False,
) -> None:
    """Drop a training file, train and register a model, drop a scoring file, score it."""
    from ephemerid.cli.demo import run_demo

    with storage_env(storage):
        ok = run_demo(home, console, json_)
    raise typer.Exit(0 if ok else 1)


@contextlib.contextmanager
def storage_env(storage: str) -> Iterator[None]:
    """With ``azurite``: start Azurite and point the store and the bucket at it meanwhile."""
    if storage == "local":
        yield
        return
    if storage != "azurite":
        raise BadInput(f"--storage '{storage}' is unknown: use local or azurite")
    from ephemerid.testing import azurite

    binary = azurite.find_binary()
    if binary is None:
        raise BadInput("azurite is not installed: run `npm ci` in the ephemerid checkout")
    with azurite.running(binary) as emulator:
        values = {
            "EPHEMERID_STORAGE": emulator.connection_string,
            "EPHEMERID_STORE": f"table://{names.JOBS_TABLE}",
            "EPHEMERID_ARTIFACTS": "az://",
        }
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)  # the runners this process starts inherit the connection
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()  # typer exits with 2 on usage errors and with the code of typer.Exit
    except EphemeridError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(exc.exit_code)

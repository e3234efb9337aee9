"""The Python API, for notebooks and scripts: ``ephemerid.Client`` and its ``Job`` handles.

    client = ephemerid.Client()  # the CLI's home: EPHEMERID_HOME, else ./.ephemerid
    job = client.submit(code=".", entrypoint="train.py", params={"lr": 0.1})
    job.wait(timeout=600)
    job.metrics, job.history(), job.outputs.download("out/")

It uses the same settings, home and service as the CLI; a submit starts the home's local agent,
as ``eph submit`` does, so the job moves on with no command running. Nothing here uses asyncio or
waits at construction: it runs inside a running event loop (Jupyter) as it does anywhere, and only
``Job.wait`` and ``Job.logs(follow=True)`` block, for as long as they are asked to.
"""

from __future__ import annotations

import builtins
import codecs
import getpass
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ephemerid.agent.driver import Driver, keep_running
from ephemerid.app import build_service
from ephemerid.compare import compare
from ephemerid.errors import BadInput, EphemeridError, MissingExtra, SpecError
from ephemerid.outputs import Output, download_to, list_outputs
from ephemerid.reads import Progress
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import load_spec, read_document, validate_spec
from ephemerid.sweeps.spec import validate_sweep
from ephemerid.sweeps.state import view as sweep_view

log = logging.getLogger("ephemerid")
POLL_S = 0.3


class WaitTimedOut(EphemeridError, TimeoutError):
    """``Job.wait`` ran out of time; the job goes on (``cancel`` stops it)."""


class Client:
    """The jobs of one home: submit, look up, list and compare them."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.settings = Settings.from_env(home=Path(home) if home is not None else None)
        self.service: Service = build_service(self.settings)
        self.owner = f"cli:{getpass.getuser()}"  # the machine's own user, as the CLI submits

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def submit(
        self,
        code: str | Path | None = None,
        entrypoint: str | None = None,
        *,
        gpus: int | None = None,
        params: Mapping[str, Any] | None = None,
        inputs: Mapping[str, str] | None = None,
        backend: str | None = None,
        key: str | None = None,
        spec: str | Path | Mapping[str, Any] | None = None,
        kind: str | None = None,
        max_runtime: str | None = None,
        args: Sequence[str] | None = None,
    ) -> Job:
        """Submit a job and start the home's agent; its ``Job`` handle, at once.

        Without ``spec``: ``code`` (default ".") holds ``entrypoint`` (default "train.py").
        With ``spec`` (a YAML/JSON file or a dict): its fields, with the arguments given here
        laid over them. A spec is validated as ``eph submit`` validates it (SpecError names the
        field); the same ``key`` gives the same job back.
        """
        data = spec_data(spec, code, entrypoint, kind)
        data.setdefault("params", {}).update(params or {})
        data.setdefault("inputs", {}).update(inputs or {})
        if args is not None:
            data["args"] = list(args)
        compute = data.setdefault("compute", {})
        for name, value in {"gpus": gpus, "backend": backend, "max_runtime": max_runtime}.items():
            if value is not None:
                compute[name] = value
        what = f"spec file '{spec}'" if isinstance(spec, str | Path) else "job spec"
        checked = validate_spec(data, what)
        submitted = self.service.submit(
            checked, key=key, source="api", owner=self.owner, admin=True, python=sys.executable
        )
        if submitted.job.open:
            keep_running(self.service, log.warning)
        return Job(self, submitted.job)

    def submit_sweep(self, spec: str | Path | Mapping[str, Any], *, key: str | None = None) -> Job:
        """Submit a sweep (``kind: sweep``: a YAML/JSON file or a dict) and start the home's
        agent; its handle, at once. ``wait()`` waits for every trial; ``sweep`` says how the
        search goes, ``trials()`` gives each trial's handle, ``compare`` ranks them."""
        what = f"sweep file '{spec}'" if isinstance(spec, str | Path) else "sweep spec"
        checked = validate_sweep(sweep_data(spec), what)
        submitted = self.service.submit(
            checked, key=key, source="api", owner=self.owner, admin=True, python=sys.executable
        )
        if submitted.job.open:
            keep_running(self.service, log.warning)
        return Job(self, submitted.job)

    def job(self, job_id: str) -> Job:
        """The handle of a job by id (NotFound names an unknown one)."""
        return Job(self, self.service.get(job_id))

    def jobs(
        self, states: Iterable[JobState | str] | None = None, limit: int | None = None
    ) -> list[Job]:
        """Jobs, newest first; only those in ``states`` when given; at most ``limit``."""
        wanted = None if states is None else [JobState.parse(s) for s in states]
        if limit is not None and limit < 1:
            raise BadInput(f"limit {limit}: give a whole number of 1 or more, or None")
        return [Job(self, record) for record in self.service.list(wanted)[:limit]]

    def compare(
        self,
        jobs: Iterable[Job | JobRecord | str],
        by: str | None = None,
        desc: bool = False,
        as_frame: bool = False,
    ) -> Any:
        """One row per job (id, state, params, each metric's final value, runtime, cost),
        sorted by metric ``by`` when given; a pandas DataFrame with ``as_frame`` (pandas needed).
        """
        records = [self._record(j) for j in jobs]
        rows = compare(self.service, records, by, desc)
        return _frame(rows) if as_frame else rows

    def _record(self, job: Job | JobRecord | str) -> JobRecord:
        if isinstance(job, Job):
            return job.refresh()
        if isinstance(job, JobRecord):
            return self.service.get(job.id)
        return self.service.get(job)


class Job:
    """One job: its record (re-read on each access), logs, metrics, outputs, and a wait."""

    def __init__(self, client: Client, record: JobRecord) -> None:
        self._client = client
        self._service = client.service
        self._record = record
        self.id = record.id

    def __repr__(self) -> str:
        return f"Job({self.id!r}, state={self._record.state.value!r})"

    def refresh(self) -> JobRecord:
        self._record = self._service.get(self.id)
        return self._record

    @property
    def record(self) -> JobRecord:
        return self.refresh()

    @property
    def state(self) -> JobState:
        return self.refresh().state

    @property
    def progress(self) -> Progress:
        """What the runner reported so far: when the code started, each metric's last value."""
        return self._service.progress(self.refresh())

    @property
    def metrics(self) -> dict[str, float]:
        """Each metric's last value: the record's summary once ended, else as reported so far."""
        record = self.refresh()
        if record.state.terminal and record.metrics:
            return dict(record.metrics)
        return {n: m.value for n, m in self._service.progress(record).metrics.items()}

    @property
    def sweep(self) -> dict[str, Any]:
        """A sweep's progress: trials made, running, pruned, failed, the best so far, each trial
        (BadInput for a job that is not a sweep)."""
        record = self.refresh()
        if record.sweep is None:
            raise BadInput(f"job {self.id} is a {record.kind} job, not a sweep")
        return sweep_view(record)

    def trials(self) -> builtins.list[Job]:
        """A sweep's trials, by number: each an ordinary job."""
        return [Job(self._client, t) for t in self._service.sweep_trials(self.id)]

    def history(self) -> dict[str, list[tuple[int | None, float]]]:
        """Every value of every metric, as logged: name -> [(step, value), ...]."""
        return self._service.metric_history(self.id)

    @property
    def outputs(self) -> Outputs:
        return Outputs(self._service, self.id)

    def cancel(self) -> JobRecord:
        """Stop the job and give its compute back; its record."""
        self._record = self._service.cancel(self.id)
        return self._record

    def wait(self, timeout: float | None = None) -> JobRecord:
        """Block until the job has ended and its compute is given back; its record.

        ``timeout`` (seconds) bounds it: WaitTimedOut names the state it was in, and the job goes
        on. The home's agent moves the job; one that is gone is started again, and where none can
        start, this wait drives the job itself.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        driver = Driver(self._service, log.warning)
        while not (record := self.refresh()).settled:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimedOut(
                    f"job {self.id} is still {record.state.value} (compute "
                    f"{record.compute_state.value}) after {timeout:g}s: wait longer, or cancel it"
                )
            driver.tick(self.id)
            time.sleep(POLL_S)
        return record

    def logs(self, follow: bool = False, rank: int = 0) -> Iterator[str]:
        """The job's log as text chunks: what is there now, or with ``follow`` until it ends."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        offset = 0
        while True:
            ended = self.refresh().state.terminal  # read before the log: nothing is missed
            data = self._service.read_log(self.id, offset, rank)
            offset += len(data)
            if text := decoder.decode(data):
                yield text
            if not follow or (ended and not data):
                break
            if not data:
                time.sleep(POLL_S)
        if rest := decoder.decode(b"", final=True):
            yield rest


class Outputs:
    """What a job wrote to its output folder."""

    def __init__(self, service: Service, job_id: str) -> None:
        self._service = service
        self.job_id = job_id

    def list(self) -> list[Output]:
        """Each output file: ``name`` (relative), ``size`` in bytes, ``key`` in the bucket."""
        return list_outputs(self._service.artifacts, self._service.get(self.job_id).id)

    def download(self, folder: str | Path) -> builtins.list[Path]:
        """Copy the outputs into ``folder``, keeping their paths; the files written."""
        found = self.list()
        return download_to(self._service.artifacts, found, Path(folder), "download")


def spec_data(
    spec: str | Path | Mapping[str, Any] | None,
    code: str | Path | None,
    entrypoint: str | None,
    kind: str | None,
) -> dict[str, Any]:
    """The fields of a job from a spec (a YAML/JSON file or a dict) with ``code``,
    ``entrypoint`` and ``kind`` laid over it, or from those alone (``.`` and ``train.py`` by
    default): what ``Client.submit`` and ``eph submit`` validate. A relative local ``code`` in
    a spec file is relative to that file."""
    if spec is None:
        code_dir = str(Path(code or ".").resolve())
        return {"kind": kind or "train", "code": code_dir, "entrypoint": entrypoint or "train.py"}
    if isinstance(spec, str | Path):
        path = Path(spec)
        data = load_spec(path).model_dump(mode="json", exclude_none=True)
        if "://" not in data["code"] and not Path(data["code"]).is_absolute():
            data["code"] = str((path.parent / data["code"]).resolve())
    elif isinstance(spec, Mapping):
        data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()}
    else:
        raise BadInput(f"spec must be a path to a spec file or a dict, got {type(spec).__name__}")
    if code is not None:
        data["code"] = str(Path(code).resolve())
    if entrypoint is not None:
        data["entrypoint"] = entrypoint
    if kind is not None:
        data["kind"] = kind
    return data


def sweep_data(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A sweep's fields from a file or a dict; a relative local ``trial.code`` in a file is
    relative to that file. What ``Client.submit_sweep`` and ``eph submit`` validate."""
    if isinstance(spec, Mapping):
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in spec.items()}
    if not isinstance(spec, str | Path):
        raise BadInput(f"spec must be a path to a sweep file or a dict, got {type(spec).__name__}")
    path = Path(spec)
    data = read_document(path)
    if not isinstance(data, dict):
        raise SpecError(f"sweep file '{path}' must be a mapping of fields")
    trial = data.get("trial")
    if isinstance(trial, dict) and isinstance(trial.get("code"), str):
        code = trial["code"]
        if "://" not in code and not Path(code).is_absolute():
            data["trial"] = {**trial, "code": str((path.parent / code).resolve())}
    return data


def _frame(rows: list[dict[str, Any]]) -> Any:
    """The rows as a DataFrame: a column per param (``param.<name>``) and per metric."""
    try:
        import pandas
    except ImportError:
        raise MissingExtra("as_frame=True needs pandas: pip install pandas") from None
    flat = [
        {
            **{k: v for k, v in r.items() if k not in ("params", "metrics")},
            **{f"param.{k}": v for k, v in r["params"].items()},
            **r["metrics"],
        }
        for r in rows
    ]
    return pandas.DataFrame(flat)

"""Staging: check what a job names before it is accepted, then write all its runner is told.

``check`` refuses (SpecError) a job whose inputs, code or model are not there, before anything is
stored or rented; ``write_launch`` snapshots the code (once per content) and writes
``runs/<job>/job.json``, after the job is accepted.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ephemerid import mlflow_run, names
from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes, safe_key
from ephemerid.batch.spec import unreadable
from ephemerid.codefolder import check_size, code_files
from ephemerid.contract import Launch, LaunchEnvironment, LaunchMlflow
from ephemerid.envs.identity import CodeFiles, identify
from ephemerid.errors import EphemeridError, NotFound, SpecError
from ephemerid.models import ModelRegistry, ModelVersion
from ephemerid.record import JobRecord
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec, ModelRef


@dataclass(frozen=True)
class Plan:
    """What a checked spec resolved to: the model version, the input keys, the code's files."""

    model: ModelVersion | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    environment: LaunchEnvironment | None = None


class Staging:
    def __init__(self, artifacts: ArtifactStore, models: ModelRegistry, settings: Settings) -> None:
        self.artifacts, self.models, self.settings = artifacts, models, settings

    def check(self, spec: JobSpec, may_read: Callable[[str], bool] | None = None) -> Plan:
        """Everything the spec names, resolved and checked; SpecError naming the field if not.

        ``may_read(job_id)``: whether this job may take that job's outputs as an input (its
        owner's, or an admin's); None lets it take any job's (a job already accepted).
        """
        inputs = self._input_keys(spec, may_read)
        if spec.batch is not None:  # the harness's inputs: refused now, before compute is rented
            self._check_batch_inputs(inputs)
        model = self._resolve_model(spec)
        files = self._check_code(spec)
        return Plan(model, inputs, files, self._environment(spec, files))

    def write_launch(self, job: JobRecord, plan: Plan, spec: JobSpec | None = None) -> None:
        """Snapshot the code and write runs/<job>/job.json: all the runner will ever be told.

        ``spec``: the one submitted, with its secret params (the record keeps them masked).
        """
        spec = spec or job.spec
        if "://" in spec.code:
            code = self.artifacts.key_of(spec.code).rstrip("/")
        else:
            code = self._snapshot(Path(spec.code), plan.files)
        launch = Launch(
            job_id=job.id,
            entrypoint=spec.entrypoint,
            args=spec.args,
            params=spec.params,
            max_runtime_s=spec.compute.max_runtime,
            code=code,
            inputs=plan.inputs,
            model=plan.model.files if plan.model else None,
            heartbeat_s=self.settings.heartbeat_s,
            grace_s=self.settings.grace_s,
            log_limit_bytes=self.settings.log_limit_bytes,
            checkpoint_upload_s=self.settings.checkpoint_upload_s,
            restarts=self.settings.runner_restarts,
            env=spec.env,
            secret_params=spec.secret_params,
            environment=plan.environment,
            mlflow=self._mlflow(job, spec),
            batch=spec.batch,
        )
        put_bytes(self.artifacts, names.run_key(job.id, names.JOB_FILE), launch.dumps())

    def has_launch(self, job_id: str) -> bool:
        return self.artifacts.stat(names.run_key(job_id, names.JOB_FILE)) is not None

    def ensure_launch(self, job: JobRecord) -> None:
        """Write the launch a crash left unwritten (after the record was stored, before job.json).

        The plan is checked again from the stored spec, with the model version the job was
        accepted with; a spec that no longer checks (its code folder gone) raises SpecError.
        """
        if self.has_launch(job.id):
            return
        spec = job.spec
        if spec.secret_params:
            raise SpecError(
                f"job {job.id} has secret params, which are not kept after the submit: "
                "submit the job again"
            )
        if spec.model is not None and job.model_version:
            spec = spec.model_copy(update={"model": ModelRef.parse(job.model_version)})
        self.write_launch(job, self.check(spec))

    def _mlflow(self, job: JobRecord, spec: JobSpec) -> LaunchMlflow | None:
        """Where the job's MLflow run is made, when a tracking URI is configured."""
        uri = self.settings.mlflow_tracking_uri.get_secret_value()
        if not uri:
            return None
        experiment = spec.env.get("MLFLOW_EXPERIMENT_NAME") or mlflow_run.EXPERIMENT
        tags = mlflow_run.run_tags(job.id, job.parent)
        return LaunchMlflow(tracking_uri=uri, experiment=experiment, tags=tags)

    # -- checks ------------------------------------------------------------------------------

    def _resolve_model(self, spec: JobSpec) -> ModelVersion | None:
        if spec.model is None:
            return None
        try:
            return self.models.resolve(spec.model)
        except NotFound as exc:
            raise SpecError(f"model: {exc}") from exc

    def _input_keys(self, spec: JobSpec, may_read: Callable[[str], bool] | None) -> dict[str, str]:
        keys = {}
        for name, uri in spec.inputs.items():
            try:
                key = (
                    self.artifacts.key_of(uri.rstrip("/"))
                    if "://" in uri
                    else safe_key(uri.rstrip("/"))
                )
            except EphemeridError as exc:
                raise SpecError(f"inputs.{name}: {exc}") from exc
            _check_run_input(name, uri, key, may_read)
            if (
                self.artifacts.stat(key) is None
                and next(iter(self.artifacts.list(key.rstrip("/") + "/")), None) is None
            ):
                raise SpecError(f"inputs.{name}: '{uri}' does not exist")
            keys[name] = key
        return keys

    def _check_batch_inputs(self, inputs: dict[str, str]) -> None:
        for name, key in inputs.items():
            stat = self.artifacts.stat(key)
            for item in [stat] if stat else self.artifacts.list(key + "/"):
                if problem := unreadable(item.key, item.size):
                    raise SpecError(f"inputs.{name}: {problem}")

    def _check_code(self, spec: JobSpec) -> list[Path]:
        """The files of a local code folder (none for code already in the bucket), checked."""
        if "://" in spec.code:
            try:
                prefix = self.artifacts.key_of(spec.code).rstrip("/")
            except EphemeridError as exc:
                raise SpecError(f"code: {exc}") from exc
            if self.artifacts.stat(f"{prefix}/{spec.entrypoint}") is None:
                raise SpecError(f"entrypoint '{spec.entrypoint}' is not in code '{spec.code}'")
            return []
        code = Path(spec.code)
        if not code.is_dir():
            raise SpecError(f"code: '{spec.code}' is not a directory")
        if not (code / spec.entrypoint).is_file():
            raise SpecError(f"entrypoint '{spec.entrypoint}' is not a file in '{spec.code}'")
        files = code_files(code, skip=self._own_folders())
        _check_links(code, files)
        check_size(code, files, self.settings.code_limit_bytes, spec.code)
        return files

    def _own_folders(self) -> list[Path]:
        """ephemerid's own state, never part of a snapshot: the home, and a bucket folder."""
        own = [self.settings.home]
        if self.artifacts.root_uri.startswith("file://"):
            own.append(Path(self.artifacts.root_uri.removeprefix("file://")))
        return own

    def _environment(self, spec: JobSpec, files: list[Path]) -> LaunchEnvironment | None:
        """The environment's identity, its requirements checked (SpecError naming the line)."""
        env = spec.environment
        if env is None:
            return None
        code: CodeFiles
        if "://" in spec.code:
            prefix = self.artifacts.key_of(spec.code).rstrip("/") + "/"
            code = {
                s.key.removeprefix(prefix): functools.partial(get_bytes, self.artifacts, s.key)
                for s in self.artifacts.list(prefix)
            }
        else:
            root = Path(spec.code)
            code = {p.relative_to(root).as_posix(): p.read_bytes for p in files}
        found = identify(env, code)
        return LaunchEnvironment(
            id=found.id,
            requirements=env.requirements or "",
            packages=env.pip or [],
            python=env.python or "",
            inherit=env.inherit,
            image=env.image or "",
        )

    # -- the code snapshot -------------------------------------------------------------------

    def _snapshot(self, root: Path, files: list[Path]) -> str:
        """Upload the code folder once per content: runs/_code/<sha256>/, shared by its jobs.

        The manifest is written after the files, so a snapshot with a manifest is whole; a
        crash before it leaves files that the next job with that code writes again.
        """
        contents = {path.relative_to(root).as_posix(): path.read_bytes() for path in files}
        digest = hashlib.sha256()
        for name, data in contents.items():
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        prefix = names.code_key(digest.hexdigest())
        if self.artifacts.stat(f"{prefix}.json") is None:
            for name, data in contents.items():
                put_bytes(self.artifacts, f"{prefix}/{name}", data)
            manifest = {"files": sorted(contents)}
            put_bytes(self.artifacts, f"{prefix}.json", json.dumps(manifest).encode())
        return prefix


def _check_run_input(name: str, uri: str, key: str, may_read: Callable[[str], bool] | None) -> None:
    """Under ``runs/`` a job takes only ``runs/<job>/outputs/...`` of a job its owner may read:
    never all of ``runs/``, a job's launch or log, or the code snapshots."""
    parts = key.split("/")
    if parts[0] != names.RUNS:
        return
    if len(parts) < 3 or parts[1] == names.CODE_SNAPSHOTS or parts[2] != "outputs":
        raise SpecError(
            f"inputs.{name}: '{uri}' is not a job's outputs: under {names.RUNS}/ an input must "
            f"be {names.RUNS}/<job>/outputs/..."
        )
    if may_read is not None and not may_read(parts[1]):
        raise SpecError(
            f"inputs.{name}: '{uri}' is the output of job {parts[1]}, which is not yours: "
            "take only your own jobs' outputs, or ask an admin"
        )


def _check_links(root: Path, files: list[Path]) -> None:
    """Refuse a file that is, or lies under, a link leading out of the code folder: the
    snapshot would copy whatever it points at (a key, a secret) into the bucket."""
    inside = root.resolve()
    for path in files:
        target = path.resolve()
        if not target.is_relative_to(inside):
            name = path.relative_to(root).as_posix()
            raise SpecError(
                f"code: '{name}' in '{root}' links to '{target}', outside the code folder: "
                "copy the file in, or remove the link"
            )

"""The runner contract: what a runner is told (``job.json``) and what it answers (``result.json``).

Both files cross a machine boundary, and the service that writes a launch and the runner that
reads it may be different ephemerid releases. So each document carries ``contract``, the version
of its shape, and has one writer and one reader (``dumps`` and ``loads``, as arq's
``serialize_job``/``deserialize_job``). ``loads`` refuses any other version with a ContractError
that names both versions and what to install; a malformed document gets one naming the field.

Within one version a reader ignores fields it does not know, so a release may add an optional
field without a new version. Removing or changing a field, or adding one that a runner must obey
to run the job correctly, needs ``CONTRACT_VERSION`` raised. A runner that refuses a launch still
writes a result in its own version, so the job fails with that reason instead of hanging: a
service must keep reading the results of every older contract it still launches.

The runner imports this module, so it stays light: pydantic, names and errors, nothing of the
service. The launch carries the few fields of the spec the runner runs, not the whole JobSpec:
the record holds that, and a spec field the runner never reads must not make it refuse a job.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, ClassVar, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ephemerid import __version__, names
from ephemerid.batch.spec import BatchSpec
from ephemerid.errors import ContractError

CONTRACT_VERSION = 1
# A launch that names an environment must be obeyed (its code runs in that environment, not the
# runner's own), so it is written as contract 2: a runner of the release before environments
# refuses it, naming both versions, instead of running the code with the wrong Python. Other
# launches stay contract 1, which every runner since the first reads.
ENVIRONMENT_CONTRACT = 2
# A launch with a ``batch`` section runs under the batch harness (ephemerid.batch): a runner of
# an earlier release would run the entrypoint as a plain script and score nothing, so it is
# written as contract 3, which such a runner refuses by name.
BATCH_CONTRACT = 3

# The service's defaults for what it tells a runner (Settings reads them from here).
HEARTBEAT_S = 5.0
GRACE_S = 10.0
LOG_LIMIT_BYTES = 10 * 1024 * 1024
CHECKPOINT_UPLOAD_S = 120.0  # how often the runner uploads the checkpoint's changed files
RESTARTS = 2  # reruns of a job by a runner started again on the same compute (after a reboot)
DISK_LIMIT_BYTES = 20 * 1024**3  # a local job's work folder (runner --disk-limit-bytes)
# A result lists at most this many outputs (runs/<job>/outputs.json lists them all), so the job's
# record stays small on every store whatever the job wrote.
OUTPUTS_LISTED = 100


class RunStatus(str, Enum):
    """How a run ended, as the runner saw it (the job's state is the service's to decide)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    EVICTED = "evicted"  # the spot VM was preempted: the service runs the job again


class _Document(BaseModel):
    """A versioned file under ``runs/<job>/`` with its paired writer and reader."""

    model_config = ConfigDict(extra="ignore")

    FILE: ClassVar[str]
    READER: ClassVar[str]  # who reads it, for the version error: "runner" or "service"
    VERSIONS: ClassVar[tuple[int, ...]] = (CONTRACT_VERSION,)  # the versions its reader reads

    contract: int = CONTRACT_VERSION  # for writers only: loads checks the document's own first
    job_id: str = Field(min_length=1)

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def loads(cls, data: bytes, where: str = "") -> Self:
        """Read a document of this contract version; ContractError naming ``where`` if not."""
        where = where or cls.FILE
        try:
            document = json.loads(data)
        except ValueError as exc:  # also bytes that are not UTF-8
            raise ContractError(f"{where} is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ContractError(f"{where} must be a JSON object, not {type(document).__name__}")
        cls._check_version(where, document.get("contract"))
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            raise ContractError(_explain(where, exc)) from exc

    @classmethod
    def _check_version(cls, where: str, version: Any) -> None:
        if type(version) is int and version in cls.VERSIONS:
            return
        said = (
            f"speaks runner contract {version}"
            if type(version) is int
            else "has no runner contract version ('contract')"
        )
        raise ContractError(
            f"{where} {said}, but this {cls.READER} (ephemerid {__version__}) speaks contract "
            f"{' and '.join(map(str, cls.VERSIONS))}: run the same ephemerid release on the "
            "service and on the compute "
            "(for azure-vm, EPHEMERID_RUNNER_PACKAGE; by default it is the service's own release)"
        )


class LaunchEnvironment(BaseModel):
    """A launch's ``environment``: what the runner builds (or the image it runs the code in) first.

    ``id`` is the environment's identity (``ephemerid.envs.identity``): its build's folder name.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{16,64}$")
    requirements: str = ""  # a file in the job's code folder
    packages: list[str] = Field(default_factory=list)  # the spec's ``pip`` list
    python: str = ""  # "3.11"; empty: the runner's own version
    inherit: bool = False
    image: str = ""


class LaunchMlflow(BaseModel):
    """A launch's ``mlflow``: where the job's MLflow run is made (``ephemerid.mlflow_run``).

    Optional within contract 1: a runner that does not know it runs the job untracked. The URI
    may hold credentials, as ``secret_params`` do: the runner masks it wherever it writes.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    tracking_uri: str = Field(min_length=1)
    experiment: str = Field(min_length=1)
    tags: dict[str, str] = Field(default_factory=dict)  # the run's, from the job's record


class Launch(_Document):
    """``runs/<job>/job.json``: all a runner is told, written once by the service at submit.

    Keys (``code``, ``inputs``, ``model``) are artifact keys in the store the runner was given.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    FILE = names.JOB_FILE
    READER = "runner"
    VERSIONS = (CONTRACT_VERSION, ENVIRONMENT_CONTRACT, BATCH_CONTRACT)

    entrypoint: str = Field(min_length=1)  # a path inside ``code``
    args: list[str]
    params: dict[str, Any]
    max_runtime_s: float = Field(gt=0)
    code: str = Field(min_length=1)
    inputs: dict[str, str]  # input name -> key
    model: str | None  # the registered model's files, for a predict job
    heartbeat_s: float = Field(HEARTBEAT_S, gt=0)
    grace_s: float = Field(GRACE_S, ge=0)
    log_limit_bytes: int = Field(LOG_LIMIT_BYTES, ge=0)
    checkpoint_upload_s: float = Field(CHECKPOINT_UPLOAD_S, ge=0)  # 0: only when the run ends
    restarts: int = Field(RESTARTS, ge=0)  # a runner started again after a reboot reruns it
    env: dict[str, str] = Field(default_factory=dict)  # the spec's own, for the entrypoint
    secret_params: list[str] = Field(default_factory=list)  # masked in the log
    environment: LaunchEnvironment | None = None  # None: the runner's own environment
    mlflow: LaunchMlflow | None = None  # None: no MLflow run (EPHEMERID_MLFLOW_TRACKING_URI unset)
    batch: BatchSpec | None = None  # the spec's ``batch:``: run under the harness

    @model_validator(mode="before")
    @classmethod
    def _versioned(cls, data: Any) -> Any:
        """A launch written with a batch section is contract 3, else with an environment 2."""
        if not isinstance(data, dict) or "contract" in data:
            return data
        if data.get("batch"):
            return {**data, "contract": BATCH_CONTRACT}
        if data.get("environment"):
            return {**data, "contract": ENVIRONMENT_CONTRACT}
        return data


class Result(_Document):
    """``runs/<job>/result.json``: how the run ended. Rank 0 writes it last: it is the completion
    event. The runner fills it in as the run goes, so it is not frozen (assignments are checked).
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)
    FILE = names.RESULT_FILE
    READER = "service"

    status: RunStatus
    reason: str = ""
    exit_code: int | None = None
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime | None = None
    outputs: list[str] = Field(default_factory=list)  # keys under runs/<job>/outputs/
    metrics: dict[str, float] = Field(default_factory=dict)
    # Written with the manifest (outputs.json): ``outputs`` then lists only the first of them.
    # An older runner of this contract lists every output and leaves these None.
    output_count: int | None = Field(default=None, ge=0)
    output_bytes: int | None = Field(default=None, ge=0)
    setup_s: float | None = Field(default=None, ge=0)  # building (or waiting for) the environment
    # the job's MLflow run (launch.mlflow); None when it has none, or from an older runner
    mlflow_run_id: str | None = None

    def summarize(self, manifest: Outputs) -> None:
        """List the first of ``manifest``'s outputs, and count them all and their bytes."""
        self.outputs = first_outputs(self.job_id, manifest.outputs)
        self.output_count, self.output_bytes = len(manifest.outputs), manifest.total_bytes


class Heartbeat(BaseModel):
    """``runs/<job>/heartbeat.json``: rank 0's beat, every ``heartbeat_s`` and at once when the
    entrypoint starts. ``started_at`` is when the user's code started (None until it has), so a
    running or cancelled job shows its user time before any result exists.

    Liveness, not an order: it has no version, and its reader keeps what it can use (a beat it
    cannot read counts as none), so beats of every runner of this contract stay readable.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    at: AwareDatetime
    pid: int | None = None
    started_at: AwareDatetime | None = None

    def dumps(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def loads(cls, data: bytes) -> Heartbeat | None:
        """The beat in ``data``; None when it is not one."""
        try:
            return cls.model_validate_json(data)
        except ValueError:  # pydantic's ValidationError is one
            return None


class Outputs(_Document):
    """``runs/<job>/outputs.json``: every output the run uploaded, written before the result."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    FILE = names.OUTPUTS_FILE
    READER = "service"

    outputs: list[str]  # every key under runs/<job>/outputs/
    total_bytes: int = Field(ge=0)


def first_outputs(job_id: str, keys: list[str], limit: int = OUTPUTS_LISTED) -> list[str]:
    """At most ``limit`` of ``keys``, the files of ``outputs/model/`` first: registering a
    trained model needs to see one of them (``JobRecord.model_owed``)."""
    model = names.run_key(job_id, f"{names.OUTPUTS_DIR}/model/")
    return sorted(keys, key=lambda key: not key.startswith(model))[:limit]


def _explain(where: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "missing":
            problems.append(f"required field '{field}' is missing")
        else:
            problems.append(f"field '{field}': {err['msg']}")
    return f"{where} is not valid under runner contract {CONTRACT_VERSION}: " + "; ".join(problems)

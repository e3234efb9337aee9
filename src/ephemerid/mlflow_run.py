"""MLflow, where users already are: each job is one MLflow run when a tracking URI is configured.

``EPHEMERID_MLFLOW_TRACKING_URI`` reaches the runner in the launch (``Launch.mlflow``). Before
the entrypoint starts, rank 0's runner makes the job's run (named after the job, tagged with
``TAGS``: its id, and its sweep's for a trial; its params logged), or finds it again when the job
runs again (a restart, an eviction), and hands the code ``MLFLOW_TRACKING_URI``,
``MLFLOW_RUN_ID`` and ``MLFLOW_EXPERIMENT_ID``: the code's own ``mlflow.log_metric`` (and
``ephemerid.track``'s) land in that run. When the code has ended the runner ends the run
(``FINISHED``, ``FAILED`` or ``KILLED``) and reports its id in the result.

Once the job is settled (terminal, its compute given back) the service tags the run with the bill
(``COST_TAG``, ``HELD_TAG``) and ends it if no runner did (a cancel). All of it is best effort:
mlflow is imported only here, lazily, and neither a missing mlflow nor a failing tracking server
ever fails a job or a release; each says so once. A tracking URI may hold credentials: it is
masked wherever it could be written (``sandbox.uri_secrets``), and never shown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ephemerid import names
from ephemerid.artifacts import ArtifactStore, get_bytes
from ephemerid.contract import Launch, LaunchMlflow, Result, RunStatus
from ephemerid.errors import EphemeridError

if TYPE_CHECKING:
    from ephemerid.record import JobRecord
    from ephemerid.sandbox import Mask

log = logging.getLogger("ephemerid")

JOB_TAG = "ephemerid.job_id"
SWEEP_TAG = "ephemerid.sweep_id"
COST_TAG = "ephemerid.cost_usd"
HELD_TAG = "ephemerid.held_s"
STATE_TAG = "ephemerid.state"
EXPERIMENT = "ephemerid"  # the spec's env MLFLOW_EXPERIMENT_NAME names another
INSTALL = "pip install 'ephemerid[mlflow]'"
# How a run ends, from how the runner saw the job end, and from the job's final state.
ENDED_AS = {
    RunStatus.SUCCEEDED: "FINISHED",
    RunStatus.FAILED: "FAILED",
    RunStatus.TIMED_OUT: "KILLED",
    RunStatus.EVICTED: "KILLED",  # it runs again elsewhere: the same run goes on then
}
STATE_ENDS_AS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED"}  # any other end: KILLED
STOPPED = frozenset({"CANCELLED", "PRUNED"})  # the service's decision, which no runner knows
MAX_PARAM_CHARS = 6000  # what MLflow stores of a param's value

Say = Callable[[str], None]


def load() -> ModuleType | None:
    """The mlflow package, or None when it cannot be imported here."""
    try:
        import mlflow
    except ImportError:  # a broken install raises something else: its callers catch it
        return None
    return mlflow


def run_tags(job_id: str, sweep_id: str = "") -> dict[str, str]:
    """The tags a job's run is made with: its id, and its sweep's when it is a trial."""
    return {JOB_TAG: job_id, **({SWEEP_TAG: sweep_id} if sweep_id else {})}


def find_run(client: Any, experiment: str, job_id: str) -> Any | None:
    """The run made for ``job_id`` in ``experiment`` (its name), or None."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{job_id}'", max_results=1
    )
    return runs[0] if runs else None


class JobRun:
    """The runner's side: the job's run, made (or found again) before the code starts, ended
    after it. ``say`` writes to the job's log, which masks the tracking URI."""

    def __init__(self, launch: LaunchMlflow, job_id: str, say: Say) -> None:
        self.launch, self.job_id, self.say = launch, job_id, say
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, params: Mapping[str, Any], secret: list[str]) -> dict[str, str]:
        """Make or find the run; the variables that point the code at it (none if it failed)."""
        try:
            mlflow = load()
            if mlflow is None:
                self.say(f"MLflow logging is off: mlflow is not installed here ({INSTALL})")
                return {}
            client = mlflow.MlflowClient(tracking_uri=self.launch.tracking_uri)
            run = find_run(client, self.launch.experiment, self.job_id)
            if run is not None:
                client.update_run(run.info.run_id, status="RUNNING")
                self.say(f"MLflow run {run.info.run_id}: the job runs again, in the same run")
            else:
                run = self._create(mlflow, client, params, secret)
                self.say(f"MLflow run {run.info.run_id} (experiment '{self.launch.experiment}')")
        except Exception as exc:  # the server refused, or is not there: the job runs untracked
            self.say(f"MLflow logging is off: the job's run could not be made: {exc}")
            return {}
        self.client, self.run_id = client, run.info.run_id
        return {
            "MLFLOW_TRACKING_URI": self.launch.tracking_uri,
            "MLFLOW_RUN_ID": run.info.run_id,
            "MLFLOW_EXPERIMENT_ID": run.info.experiment_id,
        }

    def _create(
        self, mlflow: ModuleType, client: Any, params: Mapping[str, Any], secret: list[str]
    ) -> Any:
        experiment = client.get_experiment_by_name(self.launch.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(self.launch.experiment)
        )
        tags = {**self.launch.tags, JOB_TAG: self.job_id}
        run = client.create_run(experiment_id, tags=tags, run_name=self.job_id)
        values = {name: str(value) for name, value in params.items() if name not in secret}
        kept = [mlflow.entities.Param(n, v) for n, v in values.items() if len(v) <= MAX_PARAM_CHARS]
        if len(kept) < len(values):
            self.say(f"params longer than {MAX_PARAM_CHARS} characters are not logged to MLflow")
        if kept:
            client.log_batch(run.info.run_id, params=kept)
        return run

    def end(self, status: RunStatus) -> str | None:
        """End the run as the job ended; its id, for the result (None when there is none)."""
        if self.run_id is None:
            return None
        try:
            self.client.set_terminated(self.run_id, ENDED_AS[status])
        except Exception as exc:
            self.say(f"the job's MLflow run could not be ended: {exc}")
        return self.run_id


class SettledRuns:
    """The service's side: a settled job's run tagged with what it cost, and ended if no runner
    ended it. Never raises: a failure is one warning (masked), and the release stands."""

    def __init__(self, tracking_uri: str, artifacts: ArtifactStore, mask: Mask) -> None:
        self.tracking_uri, self.artifacts, self.mask = tracking_uri, artifacts, mask
        self._missing_said = False

    def settled(self, job: JobRecord) -> None:
        if not self.tracking_uri:
            return
        try:
            self._tag(job)
        except Exception as exc:
            log.warning("job %s: its MLflow run was not tagged: %s", job.id, self.mask(str(exc)))

    def _tag(self, job: JobRecord) -> None:
        launch = Launch.loads(get_bytes(self.artifacts, names.run_key(job.id, names.JOB_FILE)))
        if launch.mlflow is None:  # launched before MLflow was configured
            return
        mlflow = load()
        if mlflow is None:
            if not self._missing_said:
                log.warning("MLflow runs are not tagged with their cost: %s", INSTALL)
                self._missing_said = True
            return
        client = mlflow.MlflowClient(tracking_uri=launch.mlflow.tracking_uri)
        run_id = self._reported(job.id)
        if run_id is None:  # no result (a cancel): look for the run the runner made
            run = find_run(client, launch.mlflow.experiment, job.id)
            if run is None:
                return
            run_id = run.info.run_id
        cost, held = job.cost_usd, job.held_s
        client.set_tag(run_id, COST_TAG, "unknown" if cost is None else f"{cost:.6f}")
        client.set_tag(run_id, HELD_TAG, "unknown" if held is None else f"{held:.1f}")
        client.set_tag(run_id, STATE_TAG, job.state.value)
        running = client.get_run(run_id).info.status == "RUNNING"  # its runner was stopped first
        if running or job.state.value in STOPPED:
            client.set_terminated(run_id, STATE_ENDS_AS.get(job.state.value, "KILLED"))

    def _reported(self, job_id: str) -> str | None:
        """The run id the job's runner reported in its result, if it wrote one."""
        key = names.run_key(job_id, names.RESULT_FILE)
        try:
            return Result.loads(get_bytes(self.artifacts, key), where=key).mlflow_run_id
        except EphemeridError:  # no result, or one that cannot be read
            return None

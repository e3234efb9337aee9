"""The agent on the compute. It alone touches the user's code.

``python -m ephemerid.runner --artifacts URI --job ID --work-dir DIR`` fetches
``runs/<job>/job.json``, stages code, inputs, model and checkpoint, runs the entrypoint with no
shell (params reach it as a JSON file, never as shell text), streams its output to the job's log
while it runs, and its metrics (``ephemerid.track``) as they are logged, heartbeats (a beat as
the entrypoint starts says when it did), enforces ``max_runtime`` (SIGTERM, grace, SIGKILL),
uploads outputs, and writes ``runs/<job>/result.json`` last: that file is the completion event.
Both files are the runner contract (``ephemerid.contract``): a launch of a contract version this
runner does not speak ends as a failed result naming both versions, and a non-zero exit.

Launched once per process of a distributed job (torchrun, or Azure ML's PyTorch distribution:
``RANK`` and ``WORLD_SIZE`` in the environment), every rank stages its own copy in
``<work-dir>/rank-<n>``, runs the entrypoint (which inherits the launcher's ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``… for ``torch.distributed``) and streams its output, rank 0 to the
job's log and rank n to ``output.rank-<n>.log``; only rank 0 heartbeats, uploads outputs and the
checkpoint, and writes ``result.json``.

On a spot VM, ``--scheduled-events URL`` makes it watch the instance metadata service: on a
``Preempt`` event for this VM it SIGTERMs the entrypoint (which may write a checkpoint), uploads
the checkpoint and outputs, and reports ``evicted`` so ephemerid runs the job again elsewhere.
It warms Scheduled Events up as it starts (the first answer may take minutes). While the
entrypoint runs, rank 0 uploads its checkpoint's changes every ``checkpoint_upload_s``
(``ephemerid.checkpoint``: a spot VM may vanish with no notice). A runner started again on the
same machine (after a reboot) reruns the job from that checkpoint or stands down (``restarts``).
``--stop-by TIME`` (azure-vm) stops the entrypoint by then even short of ``max_runtime`` (a VM
that booted late), so the result is written before the VM's own deadline deletes it.

It first joins the job's cgroup when given one (``--cgroup``) and becomes a child subreaper, then
says which in the log; when the entrypoint ends it ends whatever the entrypoint left running
(``ephemerid.procs``). ``--disk-limit-bytes`` stops a job whose work folder outgrows it.
``--run-as USER`` (azure-vm) starts the entrypoint as that OS user, with no extra groups, owning
only the folders it writes (output, checkpoint, home, tmp, the metrics file); the runner alone
reads its own environment and uploads.

When the launch names an MLflow tracking URI, rank 0 makes (or finds again) the job's MLflow run
before the entrypoint starts, points the code at it, and ends it after (``ephemerid.mlflow_run``).
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ephemerid import names, procs, sandbox
from ephemerid.artifacts import (
    ArtifactStore,
    download,
    get_bytes,
    open_artifacts,
    put_bytes,
    upload_dir,
)
from ephemerid.batch.mode import wanted
from ephemerid.checkpoint import CheckpointSync
from ephemerid.contract import LOG_LIMIT_BYTES, Launch, Outputs, Result, RunStatus
from ephemerid.envs.build import BuildFailed
from ephemerid.envs.setup import JobSetup
from ephemerid.errors import ContractError
from ephemerid.heartbeat import Beats
from ephemerid.imds import ScheduledEvents, parse_deadline, seconds_until
from ephemerid.joblog import LogPump, MetricsPump
from ephemerid.mlflow_run import JobRun
from ephemerid.rank import Rank
from ephemerid.restarts import Busy, GaveUp, Starts
from ephemerid.watch import Stop, stop_group, watch, watchers

if TYPE_CHECKING:
    from ephemerid.batch.harness import Harness

# What a runner stages in its work folder; a start after the first clears it all first.
STAGED: tuple[str, ...] = ("code", "input", "output", "checkpoint", "model", "home", "tmp")
STAGED += ("batch", "params.json", names.METRICS_FILE)


class Runner:
    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        work: Path,
        events: ScheduledEvents | None = None,
        events_poll_s: float = 1.0,
        rank: Rank | None = None,
        stop_by: datetime | None = None,
        disk_limit: int | None = None,
        isolation: procs.Isolation | None = None,
        run_as: str | None = None,
        envs_root: Path | None = None,
    ) -> None:
        self.rank, self.stop_by = rank or Rank(), stop_by
        self.run_as = run_as  # its user is looked up when staging
        self.user: pwd.struct_passwd | None = None
        self.disk_limit, self.isolation = disk_limit, isolation
        self.store, self.job_id = store, job_id
        work = work.resolve()  # the entrypoint runs in its code folder: no path may be relative
        self.work = work / f"rank-{self.rank.rank}" if self.rank.world > 1 else work
        self.events, self.events_poll_s = events, events_poll_s
        log_key = names.run_key(job_id, names.log_file(self.rank.rank))
        self.mask = sandbox.Mask.of_env(os.environ)
        self.pump = LogPump(store, log_key, LOG_LIMIT_BYTES, self.mask)  # limit: see the launch
        self.starts = Starts(self.work)
        self.checkpoints = CheckpointSync(
            store, self.work / "checkpoint", names.run_key(job_id, names.CHECKPOINT_DIR)
        )
        metrics_key = names.run_key(job_id, names.METRICS_FILE)
        self.metrics = MetricsPump(
            store, metrics_key, self.work / names.METRICS_FILE, LOG_LIMIT_BYTES, self.mask
        )
        self._stop, self._ran = threading.Event(), threading.Event()
        self.beats = Beats(store, job_id, self.pump, self.metrics, self._stop, self.say)
        self.owner = True  # whether this start runs the job (and so writes its result)
        self.tracking: JobRun | None = None  # the job's MLflow run, when the launch asks for one
        self.harness: Harness | None = None  # a predict job's load/predict (ephemerid.batch)
        # envs_root: where environments are built and kept (else in the work folder: per job)
        self.setup = JobSetup(self.work, job_id, self.rank.rank, self.say, self.pump.write)
        self.setup.envs_root = envs_root or self.setup.envs_root

    def say(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self.pump.write(f"[ephemerid {stamp}] {message}\n".encode())
        self.pump.flush()

    def run(self) -> Result:
        result = Result(job_id=self.job_id, status=RunStatus.FAILED)  # until the run says otherwise
        try:
            if self.events is not None and not self.events.warm_up():  # it may take minutes
                self.say("Scheduled Events has not answered yet: it goes on while the job stages")
            launch = self._read_launch()
            self.owner = self._take_over(launch)
            if not self.owner:
                return result
            if self.isolation is not None:
                self.say(self.isolation.describe())
            if self.rank.leader:
                beat = threading.Thread(target=self.beats.run, args=(launch.heartbeat_s,))
                beat.daemon = True
                beat.start()
            else:
                threading.Thread(target=self.beats.flush_often, daemon=True).start()
            entry, env = self._stage(launch)
            self.setup.prepare(launch, env, result, self.user)
            stop = self._execute(launch, entry, env, result)
            if stop is not None and not stop.upload:
                self.say("outputs and checkpoint not uploaded: the job passed its disk limit")
            elif self.rank.leader:
                self._upload(result)
        except BuildFailed as exc:  # the installer's output is in the log already
            result.status, result.reason = RunStatus.FAILED, str(exc)
            self.say("the job's environment could not be built: its code did not run")
        except (ContractError, GaveUp) as exc:  # another release's launch, or too many restarts
            result.status, result.reason = RunStatus.FAILED, str(exc)
            self.say(result.reason)
        except Exception as exc:  # anything the runner hits ends as a failed result, not a hang
            result.status, result.reason = RunStatus.FAILED, f"runner error: {exc}"
            self.say(result.reason)
        finally:
            self._stop.set()
            self.setup.close()
            if self.tracking is not None:  # ended as the run ended, before the result is written
                result.mlflow_run_id = self.tracking.end(result.status)
            if self.rank.leader:  # the metrics the code logged, kept whatever else went wrong
                result.metrics = self.metrics.finish(self.say)
            self.pump.close()
            result.finished_at = result.finished_at or _now()
            result.reason = self.mask(result.reason)
            if self.rank.leader and self.owner:  # other ranks: the launcher reports their ends
                key = names.run_key(self.job_id, names.RESULT_FILE)
                put_bytes(self.store, key, result.dumps())
            self.starts.release()  # only now: the next start finds the result written
        return result

    def _take_over(self, launch: Launch) -> bool:
        """Whether this start runs the job: not when another runner holds the work folder, nor
        when the result is written; a start after the first reruns it (ephemerid.restarts)."""
        try:
            self.starts.lock()
        except Busy as exc:
            self.say(f"{exc}: the job runs there, and never twice at once")
            return False
        if self.rank.leader and self.store.stat(names.run_key(self.job_id, names.RESULT_FILE)):
            self.say("this job's result is written already: this start leaves it as it is")
            return False
        start = self.starts.claim(launch.restarts, STAGED)
        for note in start.notes():
            self.say(note)
        return True

    def _read_launch(self) -> Launch:
        key = names.run_key(self.job_id, names.JOB_FILE)
        launch = Launch.loads(get_bytes(self.store, key), where=key)
        self.pump.limit = self.metrics.limit = launch.log_limit_bytes
        values = [launch.params[n] for n in launch.secret_params if n in launch.params]
        secrets = [v if isinstance(v, str) else json.dumps(v) for v in values]
        if launch.mlflow is not None:  # a tracking URI may hold credentials
            secrets += sandbox.uri_secrets(launch.mlflow.tracking_uri)
        if secrets:  # the script may print them: the log never shows them
            self.mask = self.pump.mask = self.metrics.mask = self.mask.with_secrets(secrets)
        return launch

    def _stage(self, launch: Launch) -> tuple[Path, dict[str, str]]:
        dirs = {n: self.work / n for n in STAGED if "." not in n}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        where = f" (rank {self.rank.rank} of {self.rank.world})" if self.rank.world > 1 else ""
        self.say(f"staging code and inputs for job {self.job_id}{where}")
        download(self.store, launch.code, dirs["code"])
        entry = dirs["code"] / launch.entrypoint
        if not entry.is_file():
            raise FileNotFoundError(f"entrypoint '{launch.entrypoint}' is not in code")
        if (batch := wanted(launch, entry)) is not None:  # inputs streamed, not staged
            from ephemerid.batch.harness import Harness  # pyarrow: only for these jobs

            self.harness = Harness(self.store, launch, batch, self.work, self.say)
        for name, key in launch.inputs.items() if self.harness is None else ():
            if not download(self.store, key, dirs["input"] / name):
                raise FileNotFoundError(f"input '{name}' ({self.store.uri(key)}) is empty or gone")
        if launch.model:
            download(self.store, launch.model, dirs["model"])
        download(self.store, names.run_key(self.job_id, names.CHECKPOINT_DIR), dirs["checkpoint"])
        self.checkpoints.staged()
        params = self.work / "params.json"
        params.write_text(json.dumps(launch.params))
        contract = {
            names.ENV_JOB_ID: self.job_id,
            names.ENV_INPUT_DIR: str(dirs["input"]),
            names.ENV_OUTPUT_DIR: str(dirs["output"]),
            names.ENV_CHECKPOINT_DIR: str(dirs["checkpoint"]),
            names.ENV_MODEL_DIR: str(dirs["model"]),
            names.ENV_PARAMS: str(params),
            names.ENV_METRICS: str(self.work / names.METRICS_FILE),
        }
        if launch.mlflow is not None and self.rank.leader:  # the job's run, made before it starts
            self.tracking = JobRun(launch.mlflow, self.job_id, self.say)
            contract.update(self.tracking.start(launch.params, launch.secret_params))
        if self.run_as is not None:
            self._hand_over([dirs[n] for n in ("output", "checkpoint", "home", "tmp")])
        return entry, sandbox.user_env(os.environ, launch.env, contract, self.work)

    def _hand_over(self, folders: list[Path]) -> None:
        """Give the job's user what it writes; the rest of the work folder stays the runner's."""
        try:
            self.user = user = pwd.getpwnam(str(self.run_as))
        except KeyError:
            raise ValueError(f"--run-as {self.run_as}: there is no such user here") from None
        (self.work / names.METRICS_FILE).touch()  # its own file: it cannot swap in a link
        for path in [self.work / names.METRICS_FILE, *folders]:
            for item in [path, *path.rglob("*")]:
                os.chown(item, user.pw_uid, user.pw_gid, follow_symlinks=False)

    def _execute(
        self, launch: Launch, entry: Path, env: dict[str, str], result: Result
    ) -> Stop | None:
        max_runtime = launch.max_runtime_s
        limit = min(max_runtime, seconds_until(self.stop_by)) if self.stop_by else max_runtime
        command = self.setup.command(launch, entry, env, self.user)
        user = None if self.setup.in_container else self.user  # docker's client is the runner's
        if self.harness is not None:  # the worker runs load/predict in the entrypoint's place
            self.harness.prepare(self.user)
            command = self.harness.command(command, entry)
        self.say(f"starting {launch.entrypoint} (max runtime {max_runtime:.0f}s)")
        result.started_at = started = _now()
        mark = os.environ.get(procs.ENV_MARK)  # local compute finds the job's processes by it
        proc = subprocess.Popen(
            command,
            cwd=entry.parent,
            env={**env, procs.ENV_MARK: mark} if mark else env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        self.starts.entrypoint(proc.pid)  # its process group: a next start ends what is left
        if self.harness is not None:
            self.harness.start(proc)
        if self.rank.leader:
            self.beats.started(started)
        reader = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        reader.start()
        every = launch.checkpoint_upload_s
        if self.rank.leader and every > 0:
            args = (every, self._ran, self.say)
            threading.Thread(target=self.checkpoints.every, args=args, daemon=True).start()
        stop = watch(
            proc, limit, *watchers(self.events, self.events_poll_s, self.work, self.disk_limit)
        )
        if stop is not None:
            self.say(stop.note)
            stop_group(proc, launch.grace_s)
        self._ran.set()
        if self.isolation is not None and (left := self.isolation.end_leftovers(launch.grace_s)):
            self.say(f"stopped {left} process(es) the entrypoint left running")
        reader.join(timeout=10)
        if proc.stdout is not None and not reader.is_alive():
            proc.stdout.close()
        result.finished_at = _now()
        result.exit_code = proc.returncode
        if stop is not None:
            result.status, result.reason = stop.status, stop.reason
            if stop.status is RunStatus.TIMED_OUT and limit < max_runtime:
                when = f"{self.stop_by:%Y-%m-%dT%H:%M:%SZ}"
                result.reason = f"stopped at {when}, the latest its VM's deadline allows"
        elif proc.returncode == 0:
            result.status = RunStatus.SUCCEEDED
        else:
            result.reason = (
                f"entrypoint exited with code {proc.returncode}; "
                f"last output:\n{self.pump.last_lines()}"
            )
        if self.harness is not None:  # what the harness saw: bad input, a predict that failed
            self.harness.finish(result)
        self.say(f"entrypoint finished: {result.status.value} (exit code {proc.returncode})")
        return stop

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.pump.note_tail(chunk)
            self.pump.write(chunk)
        self.pump.flush()

    def _upload(self, result: Result) -> None:
        folder = self.work / "output"
        out = names.run_key(self.job_id, names.OUTPUTS_DIR)
        keys = upload_dir(self.store, folder, out, skip=self._not_uploaded)
        size = sum(
            p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
        )
        if self.harness is not None:  # the shards and their manifest, uploaded as they were made
            keys, size = self.harness.uploaded(keys, size)
        manifest = Outputs(job_id=self.job_id, outputs=keys, total_bytes=size)
        put_bytes(self.store, names.run_key(self.job_id, names.OUTPUTS_FILE), manifest.dumps())
        result.summarize(manifest)
        self.checkpoints.skip = self._not_uploaded
        self.checkpoints.sync()  # what changed since the last periodic upload
        self.say(f"uploaded {len(keys)} output file(s)")

    def _not_uploaded(self, name: str, why: str) -> None:
        self.say(f"not uploaded: {name}: {why}")


def _now() -> datetime:
    return datetime.now(UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ephemerid.runner", description=__doc__)
    parser.add_argument("--artifacts", required=True, help="root URI of the artifact store")
    parser.add_argument("--job", required=True, help="job id")
    parser.add_argument("--work-dir", type=Path, default=Path.cwd())
    parser.add_argument("--scheduled-events", help="IMDS Scheduled Events URL (spot VMs)")
    parser.add_argument("--vm-name", default=socket.gethostname(), help="this VM's name")
    parser.add_argument("--stop-by", type=parse_deadline, help="UTC time the run must stop by")
    parser.add_argument("--disk-limit-bytes", type=int, help="stop a job whose folder outgrows it")
    parser.add_argument("--cgroup", type=Path, help="the job's cgroup v2 folder, to join first")
    parser.add_argument("--run-as", help="the OS user the entrypoint runs as (azure-vm)")
    parser.add_argument("--envs-dir", type=Path, help="where environments are built and kept")
    args = parser.parse_args(argv)
    sandbox.undumpable()  # the user's code, the same OS user, cannot read our environ
    isolation = procs.Isolation.setup(args.cgroup)  # before anything of the job starts
    events = ScheduledEvents(args.scheduled_events, args.vm_name) if args.scheduled_events else None
    try:
        rank = Rank.from_env()
    except ValueError as exc:
        parser.error(str(exc))
    store = open_artifacts(args.artifacts, os.environ)  # the connection the compute gave it
    runner = Runner(
        store,
        args.job,
        args.work_dir,
        events,
        rank=rank,
        stop_by=args.stop_by,
        disk_limit=args.disk_limit_bytes,
        isolation=isolation,
        run_as=args.run_as,
        envs_root=args.envs_dir,
    )
    succeeded = runner.run().status is RunStatus.SUCCEEDED
    return 0 if succeeded or not runner.owner else 1  # standing down is no failure to restart


if __name__ == "__main__":
    sys.exit(main())

"""The agent on the compute. It alone touches the user's code.

``python -m ephemerid.runner --artifacts URI --job ID --work-dir DIR`` fetches
``runs/<job>/job.json``, stages code, inputs, model and checkpoint, runs the entrypoint with no
shell (params reach it as a JSON file, never as shell text), streams its output to the job's log
while it runs, heartbeats, enforces ``max_runtime`` (SIGTERM, grace, SIGKILL), uploads outputs,
and writes ``runs/<job>/result.json`` last: that file is the completion event. Both files are the
runner contract (``ephemerid.contract``): a launch of a contract version this runner does not speak
ends as a failed result naming both versions, and a non-zero exit.

Launched once per process of a distributed job (torchrun, or Azure ML's PyTorch distribution:
``RANK`` and ``WORLD_SIZE`` in the environment), every rank stages its own copy in
``<work-dir>/rank-<n>``, runs the entrypoint (which inherits the launcher's ``RANK``,
``LOCAL_RANK``, ``MASTER_ADDR``… for ``torch.distributed``) and streams its output, rank 0 to the
job's log and rank n to ``output.rank-<n>.log``; only rank 0 heartbeats, uploads outputs and the
checkpoint, and writes ``result.json``.

On a spot VM, ``--scheduled-events URL`` makes it watch the instance metadata service: on a
``Preempt`` event for this VM it SIGTERMs the entrypoint (which may write a checkpoint), uploads
the checkpoint and outputs, and reports ``evicted`` so ephemerid runs the job again elsewhere.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ephemerid import names
from ephemerid.artifacts import (
    ArtifactStore,
    download,
    get_bytes,
    open_artifacts,
    put_bytes,
    upload_dir,
)
from ephemerid.contract import LOG_LIMIT_BYTES, Launch, Outputs, Result, RunStatus
from ephemerid.errors import ContractError
from ephemerid.track import summarize

LOG_FLUSH_S = 0.5
LOG_FLUSH_BYTES = 256 * 1024


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed launch; ``Rank()`` is a job of one process."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Rank:
        env = dict(os.environ) if env is None else env
        try:
            rank, world = int(env.get("RANK") or 0), int(env.get("WORLD_SIZE") or 1)
        except ValueError as exc:
            raise ValueError(f"RANK and WORLD_SIZE must be whole numbers: {exc}") from exc
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world}")
        return cls(rank, world)

    @property
    def leader(self) -> bool:
        return self.rank == 0


class LogPump:
    """Copies the child's output to the job log in batches, up to a limit, keeping a tail."""

    def __init__(self, store: ArtifactStore, key: str, limit: int) -> None:
        self.store, self.key, self.limit = store, key, limit
        self.written = 0
        self.dropped = 0
        self.tail: collections.deque[bytes] = collections.deque(maxlen=20)
        self._buffer = bytearray()
        self._partial = b""
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        room = self.limit - self.written - len(self._buffer)
        if room < len(data):
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        self._buffer += data
        if (
            len(self._buffer) >= LOG_FLUSH_BYTES
            or time.monotonic() - self._last_flush > LOG_FLUSH_S
        ):
            self._flush()

    def note_tail(self, data: bytes) -> None:
        """Keep the last lines whole, though a line may arrive over several reads."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-500:]
        for line in lines[-20:]:
            self.tail.append(line[:500])

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self.store.append(self.key, bytes(self._buffer))
            self.written += len(self._buffer)
            self._buffer.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self.dropped:
            note = (
                f"\n[ephemerid] log truncated at {self.limit} bytes; "
                f"{self.dropped} more bytes were not kept\n"
            )
            self.store.append(self.key, note.encode())

    def last_lines(self) -> str:
        lines = [*self.tail, self._partial] if self._partial else list(self.tail)
        return b"\n".join(lines).decode("utf-8", "replace")[-1500:]


class ScheduledEvents:
    """The VM's Scheduled Events (instance metadata service): is this VM about to be preempted?"""

    def __init__(self, url: str, vm_name: str, timeout_s: float = 2.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"scheduled events URL '{url}' must be http(s)")
        self.url, self.vm_name, self.timeout_s = url, vm_name, timeout_s

    def preempt(self) -> dict[str, Any] | None:
        """The Preempt event naming this VM, if one is scheduled; None (also when unreachable)."""
        import urllib.request  # here, not at the top: only spot VMs pay for importing it

        request = urllib.request.Request(self.url, headers={"Metadata": "true"})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                document = json.load(answer)
        except (OSError, ValueError):
            return None
        for event in document.get("Events") or []:
            if event.get("EventType") == "Preempt" and self.vm_name in event.get("Resources", []):
                return dict(event)
        return None


class Runner:
    def __init__(
        self,
        store: ArtifactStore,
        job_id: str,
        work: Path,
        events: ScheduledEvents | None = None,
        events_poll_s: float = 1.0,
        rank: Rank | None = None,
    ) -> None:
        self.rank = rank or Rank()
        self.store, self.job_id = store, job_id
        work = work.resolve()  # the entrypoint runs in its code folder: no path may be relative
        self.work = work / f"rank-{self.rank.rank}" if self.rank.world > 1 else work
        self.events, self.events_poll_s = events, events_poll_s
        log_key = names.run_key(job_id, names.log_file(self.rank.rank))
        self.pump = LogPump(store, log_key, LOG_LIMIT_BYTES)  # until the launch says its own
        self._stop = threading.Event()

    def say(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        self.pump.write(f"[ephemerid {stamp}] {message}\n".encode())
        self.pump.flush()

    def run(self) -> Result:
        result = Result(job_id=self.job_id, status=RunStatus.FAILED)  # until the run says otherwise
        try:
            launch = self._read_launch()
            if self.rank.leader:
                threading.Thread(target=self._heartbeat, args=(launch,), daemon=True).start()
            else:
                threading.Thread(target=self._flush_often, daemon=True).start()
            entry, env = self._stage(launch)
            self._execute(launch, entry, env, result)
            if self.rank.leader:
                self._upload(result)
        except ContractError as exc:  # another release wrote the launch: refuse, and say so
            result.status, result.reason = RunStatus.FAILED, str(exc)
            self.say(result.reason)
        except Exception as exc:  # anything the runner hits ends as a failed result, not a hang
            result.status, result.reason = RunStatus.FAILED, f"runner error: {exc}"
            self.say(result.reason)
        finally:
            self._stop.set()
            self.pump.close()
            result.finished_at = result.finished_at or _now()
            if self.rank.leader:  # the other ranks' ends are the launcher's to report
                key = names.run_key(self.job_id, names.RESULT_FILE)
                put_bytes(self.store, key, result.dumps())
        return result

    def _read_launch(self) -> Launch:
        key = names.run_key(self.job_id, names.JOB_FILE)
        launch = Launch.loads(get_bytes(self.store, key), where=key)
        self.pump.limit = launch.log_limit_bytes
        return launch

    def _stage(self, launch: Launch) -> tuple[Path, dict[str, str]]:
        dirs = {n: self.work / n for n in ("code", "input", "output", "checkpoint", "model")}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        where = f" (rank {self.rank.rank} of {self.rank.world})" if self.rank.world > 1 else ""
        self.say(f"staging code and inputs for job {self.job_id}{where}")
        download(self.store, launch.code, dirs["code"])
        for name, key in launch.inputs.items():
            if not download(self.store, key, dirs["input"] / name):
                raise FileNotFoundError(f"input '{name}' ({self.store.uri(key)}) is empty or gone")
        if launch.model:
            download(self.store, launch.model, dirs["model"])
        download(self.store, names.run_key(self.job_id, names.CHECKPOINT_DIR), dirs["checkpoint"])
        params = self.work / "params.json"
        params.write_text(json.dumps(launch.params))
        entry = dirs["code"] / launch.entrypoint
        if not entry.is_file():
            raise FileNotFoundError(f"entrypoint '{launch.entrypoint}' is not in code")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            names.ENV_JOB_ID: self.job_id,
            names.ENV_INPUT_DIR: str(dirs["input"]),
            names.ENV_OUTPUT_DIR: str(dirs["output"]),
            names.ENV_CHECKPOINT_DIR: str(dirs["checkpoint"]),
            names.ENV_MODEL_DIR: str(dirs["model"]),
            names.ENV_PARAMS: str(params),
            names.ENV_METRICS: str(self.work / names.METRICS_FILE),
        }
        return entry, env

    def _execute(self, launch: Launch, entry: Path, env: dict[str, str], result: Result) -> None:
        max_runtime = launch.max_runtime_s
        command = [sys.executable, "-u", str(entry), *launch.args]
        self.say(f"starting {launch.entrypoint} (max runtime {max_runtime:.0f}s)")
        result.started_at = _now()
        proc = subprocess.Popen(
            command,
            cwd=entry.parent,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        reader = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        reader.start()
        preempt = self._watch(proc, max_runtime)
        timed_out = proc.poll() is None and preempt is None
        if timed_out:
            self.say(f"max runtime {max_runtime:.0f}s reached: stopping (SIGTERM)")
        if preempt is not None:
            self.say(
                f"spot eviction notice (event {preempt.get('EventId')}, not before "
                f"{preempt.get('NotBefore')}): stopping the entrypoint (SIGTERM) to checkpoint"
            )
        if timed_out or preempt is not None:
            _stop_group(proc, launch.grace_s)
        reader.join(timeout=10)
        if proc.stdout is not None and not reader.is_alive():
            proc.stdout.close()
        result.finished_at = _now()
        result.exit_code = proc.returncode
        if preempt is not None:
            result.status = RunStatus.EVICTED
            result.reason = "the spot VM was preempted; the job resumes from its checkpoint"
        elif timed_out:
            result.status = RunStatus.TIMED_OUT
            result.reason = f"ran past max_runtime of {max_runtime:.0f}s and was stopped"
        elif proc.returncode == 0:
            result.status = RunStatus.SUCCEEDED
        else:
            result.reason = (
                f"entrypoint exited with code {proc.returncode}; "
                f"last output:\n{self.pump.last_lines()}"
            )
        self.say(f"entrypoint finished: {result.status.value} (exit code {proc.returncode})")

    def _watch(self, proc: subprocess.Popen[bytes], max_runtime: float) -> dict[str, Any] | None:
        """Wait for the entrypoint until ``max_runtime``; a Preempt event for this VM ends it."""
        if self.events is None:
            _wait(proc, max_runtime)
            return None
        deadline = time.monotonic() + max_runtime
        while not _wait(proc, min(self.events_poll_s, max(deadline - time.monotonic(), 0))):
            if time.monotonic() >= deadline:
                return None
            event = self.events.preempt()
            if event is not None:
                return event
        return None

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.pump.note_tail(chunk)
            self.pump.write(chunk)
        self.pump.flush()

    def _upload(self, result: Result) -> None:
        folder = self.work / "output"
        keys = upload_dir(self.store, folder, names.run_key(self.job_id, names.OUTPUTS_DIR))
        size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
        manifest = Outputs(job_id=self.job_id, outputs=keys, total_bytes=size)
        put_bytes(self.store, names.run_key(self.job_id, names.OUTPUTS_FILE), manifest.dumps())
        result.summarize(manifest)
        upload_dir(
            self.store, self.work / "checkpoint", names.run_key(self.job_id, names.CHECKPOINT_DIR)
        )
        metrics = self.work / names.METRICS_FILE
        if metrics.is_file():
            with metrics.open("rb") as stream:
                self.store.write(names.run_key(self.job_id, names.METRICS_FILE), stream)
            result.metrics = summarize(metrics.read_text(errors="replace").splitlines())
        self.say(f"uploaded {len(keys)} output file(s)")

    def _flush_often(self) -> None:
        """A rank other than 0 beats for nobody, but its log stays live too."""
        while not self._stop.wait(LOG_FLUSH_S):
            self.pump.flush()

    def _heartbeat(self, launch: Launch) -> None:
        """Beat every ``heartbeat_s``, and flush the log often so `eph logs -f` stays live."""
        key = names.run_key(self.job_id, names.HEARTBEAT_FILE)
        interval = launch.heartbeat_s
        next_beat = 0.0
        while not self._stop.wait(LOG_FLUSH_S if next_beat else 0):
            self.pump.flush()
            if time.monotonic() >= next_beat:
                beat = {"at": _now().isoformat(), "pid": os.getpid()}
                put_bytes(self.store, key, json.dumps(beat).encode())
                next_beat = time.monotonic() + interval


def _now() -> datetime:
    return datetime.now(UTC)


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the user's process group, then SIGKILL it after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if _wait(proc, wait):
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ephemerid.runner", description=__doc__)
    parser.add_argument("--artifacts", required=True, help="root URI of the artifact store")
    parser.add_argument("--job", required=True, help="job id")
    parser.add_argument("--work-dir", type=Path, default=Path.cwd())
    parser.add_argument("--scheduled-events", help="IMDS Scheduled Events URL (spot VMs)")
    parser.add_argument("--vm-name", default=socket.gethostname(), help="this VM's name")
    args = parser.parse_args(argv)
    events = ScheduledEvents(args.scheduled_events, args.vm_name) if args.scheduled_events else None
    try:
        rank = Rank.from_env()
    except ValueError as exc:
        parser.error(str(exc))
    store = open_artifacts(args.artifacts, os.environ)  # the connection the compute gave it
    runner = Runner(store, args.job, args.work_dir, events, rank=rank)
    return 0 if runner.run().status is RunStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())

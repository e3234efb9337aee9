"""Batch scoring efficiency: the tabular load/predict under the harness, against the model.

A real train job (``train.py``, 20,000 rows, 2 epochs) registers ``tabular@production``; then
``predict.py`` scores files in the bucket as real predict jobs on the local backend, under the
batch harness (``batch: {keep: [id]}``): the runner streams each file from the bucket, the
worker calls ``predict`` on each Arrow batch, and the runner writes Parquet shards and their
manifest back to the bucket. End-to-end rows/s is rows over the time from ``submit()`` to
``result.json``. The baseline is the same pair in this process: ``load`` once, then ``predict``
on the same rows as the same Arrow batches (65,536 rows, the feature columns), in memory.

The input is one block of random rows (an ``id``, 8 float32 features rounded to 4 decimals)
written over and over with fresh ids: generating 5 M distinct rows in Python would take longer
than scoring them. Runs: Parquet at 1x (``--rows`` / 4) and 4x (``--rows``), to show that
peak memory does not grow with the input (VmHWM of the runner and of the worker, from
``/proc/<pid>/status`` every 50 ms, with each process's CPU seconds from ``/proc/<pid>/stat``,
beside the CPU seconds of the in-memory pass); CSV at 4x; and a fan-out over 2 shards
(``shards: 2``, the 4x rows as 2 Parquet files, 2 local slots).

    python bench/batch_scoring.py                    # 1.25 M and 5 M rows
    python bench/batch_scoring.py --rows 20000000    # 5 M and 20 M rows
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common

GOAL_RATIO = 0.9
GOAL_GROWTH = 1.10
TABULAR = common.ROOT / "examples" / "tabular"
BLOCK_ROWS = 250_000
BATCH_ROWS = 65_536  # the harness's rows_per_batch default
FEATURES = [f"f{j}" for j in range(8)]
WORKER = "ephemerid.batch.worker"


def make_block(rows: int, seed: int = 1) -> Any:
    """``rows`` random rows of the features as an Arrow table (float32, 4 decimals)."""
    import numpy as np
    import pyarrow as pa

    x = np.round(np.random.default_rng(seed).standard_normal((rows, len(FEATURES))), 4)
    x = x.astype(np.float32)
    return pa.table({name: x[:, j] for j, name in enumerate(FEATURES)})


def write_input(service: Any, key: str, block: Any, times: int, first: int, scratch: Path) -> None:
    """``times`` copies of ``block`` with ids from ``first`` on, as Parquet or CSV by ``key``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    local = scratch / Path(key).name
    schema = pa.schema([("id", pa.int64()), *block.schema])
    parquet = key.endswith(".parquet")
    with (pq.ParquetWriter if parquet else pacsv.CSVWriter)(str(local), schema) as writer:
        for n in range(times):
            start = first + n * block.num_rows
            ids = pa.array(np.arange(start, start + block.num_rows, dtype=np.int64))
            writer.write_table(block.add_column(0, "id", ids))
    with local.open("rb") as stream:
        service.artifacts.write(key, stream)
    local.unlink()


class PeakMemory:
    """Samples the peak RSS (VmHWM) and the CPU time (utime + stime, the last seen) of every
    process in the given sessions until stopped."""

    def __init__(self, sessions: set[int]) -> None:
        self.sessions = sessions
        self.peaks: dict[int, tuple[str, int]] = {}
        self.cpu: dict[int, tuple[str, float]] = {}
        self.tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    self._sample(int(entry.name))

    def _sample(self, pid: int) -> None:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) not in self.sessions:
                return
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            return
        cmdline = cmdline or self.cpu.get(pid, ("", 0.0))[0]  # a zombie's reads empty
        self.cpu[pid] = (cmdline, (int(fields[11]) + int(fields[12])) / self.tick)
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                kib = int(line.split()[1])
                if kib > self.peaks.get(pid, ("", 0))[1]:
                    self.peaks[pid] = (cmdline, kib)

    def stop(self) -> dict[str, float]:
        """The largest peak of a worker and of any other process (the runner's side), in MiB."""
        self._stop.set()
        self._thread.join()
        found = {"runner": 0.0, "worker": 0.0, "runner_cpu_s": 0.0, "worker_cpu_s": 0.0}
        for cmdline, kib in self.peaks.values():
            who = "worker" if WORKER in cmdline else "runner"
            found[who] = max(found[who], kib / 1024)
        for cmdline, seconds in self.cpu.values():  # every process of the role, summed
            found[("worker" if WORKER in cmdline else "runner") + "_cpu_s"] += seconds
        return {k: round(v, 1) for k, v in found.items()}


def run_job(service: Any, spec: dict[str, Any], sample: bool = False) -> dict[str, Any]:
    from ephemerid import names
    from ephemerid.artifacts import get_bytes
    from ephemerid.contract import Result
    from ephemerid.spec import JobSpec

    t0 = time.perf_counter()
    job = service.submit(JobSpec.model_validate(spec)).job
    pid = job.handle.get("pid")
    memory = PeakMemory({pid}) if sample and pid else None
    result_key = names.run_key(job.id, names.RESULT_FILE)
    while service.artifacts.stat(result_key) is None:
        if time.perf_counter() - t0 > 1800:
            raise SystemExit(f"job {job.id} did not finish in 30 minutes")
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    peaks = memory.stop() if memory else {}
    result = Result.loads(get_bytes(service.artifacts, result_key), where=result_key)
    done = service.complete(job.id)
    if done.state.value != "SUCCEEDED":
        raise SystemExit(f"job {job.id} {done.state.value}: {done.reason}")
    return {"job": job.id, "seconds": seconds, "result": result, "peak_mib": peaks}


def run_fanout(service: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Submit a job over shards and drive it as the agent would: wall time to its settled end."""
    from ephemerid.reaper import reap
    from ephemerid.spec import JobSpec
    from ephemerid.testing.settle import settle

    t0 = time.perf_counter()
    parent = service.submit(JobSpec.model_validate(spec)).job
    sessions: set[int] = set()
    memory = PeakMemory(sessions)

    def tick() -> None:
        for child in service.list():
            if child.parent == parent.id and child.handle.get("pid"):
                sessions.add(child.handle["pid"])
            if child.parent == parent.id and service.has_result(child.id):
                service.complete(child.id)
        reap(service)

    [done] = settle(service, [parent.id], timeout=1800, on_tick=tick, poll_s=0.1)
    seconds = time.perf_counter() - t0
    peaks = memory.stop()
    if done.state.value != "SUCCEEDED":
        raise SystemExit(f"job {parent.id} {done.state.value}: {done.reason}")
    return {"job": parent.id, "seconds": seconds, "peak_mib": peaks, "reason": done.reason}


def train(service: Any, scratch: Path) -> None:
    sys.path.insert(0, str(TABULAR))
    import make_data

    make_data.make_dataset(scratch / "train.csv", 20_000)
    with (scratch / "train.csv").open("rb") as stream:
        service.artifacts.write("incoming/train/train.csv", stream)
    run_job(
        service,
        {
            "kind": "train",
            "code": str(TABULAR),
            "entrypoint": "train.py",
            "inputs": {"data": "incoming/train/"},
            "params": {"epochs": 2},
            "register_as": {"name": "tabular", "alias": "production"},
            "compute": {"max_runtime": 600},
        },
    )


def in_memory(model_dir: Path, block: Any, rows: int, repeats: int = 3) -> tuple[float, float]:
    """Rows/s of predict.py's own load/predict on ``rows`` rows of ``block`` as Arrow batches:
    the best of ``repeats`` passes, so a busy machine makes the ratio lower, never higher; and
    the CPU seconds (all threads) of that pass."""
    sys.path.insert(0, str(TABULAR))
    import predict

    model = predict.load(model_dir)  # the same device; outside a job, PyTorch's usual threads
    batches = [block.slice(i, BATCH_ROWS) for i in range(0, block.num_rows, BATCH_ROWS)]
    predict.predict(model, batches[0])  # warm up
    best, cpu = 0.0, 0.0
    for _ in range(repeats):
        done, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while done < rows:
            for batch in batches:
                take = batch.slice(0, rows - done)
                predict.predict(model, take)
                done += take.num_rows
                if done >= rows:
                    break
        rate = rows / (time.perf_counter() - start)
        if rate > best:
            best, cpu = rate, time.process_time() - cpu_start
    return best, cpu


def predict_spec(inputs: str, **batch: Any) -> dict[str, Any]:
    return {
        "kind": "predict",
        "code": str(TABULAR),
        "entrypoint": "predict.py",
        "inputs": {"data": inputs},
        "model": "tabular@production",
        "batch": {"keep": ["id"], **batch},
        "compute": {"max_runtime": 1800},
    }


def checked_rows(service: Any, job_id: str, rows: int) -> None:
    """The job's manifest is complete and holds one prediction per input row."""
    from ephemerid.artifacts import get_bytes
    from ephemerid.batch.manifest import MANIFEST_FILE, Manifest, predictions_key

    key = predictions_key(job_id, MANIFEST_FILE)
    manifest = Manifest.loads(get_bytes(service.artifacts, key), key)
    if not manifest.complete or manifest.rows != rows:
        raise SystemExit(f"{job_id}: manifest has {manifest.rows} rows, not {rows}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the 4x input")
    parser.add_argument("--no-csv", action="store_true", help="skip the CSV run")
    parser.add_argument("--no-fanout", action="store_true", help="skip the fan-out run")
    args = parser.parse_args()

    from ephemerid.app import build_service
    from ephemerid.artifacts import download
    from ephemerid.settings import Settings
    from ephemerid.spec import ModelRef

    times_4x = max(4, round(args.rows / BLOCK_ROWS / 4) * 4)
    runs = [("parquet 1x", "parquet", times_4x // 4), ("parquet 4x", "parquet", times_4x)]
    if not args.no_csv:
        runs.append(("csv 4x", "csv", times_4x))
    run = common.Run(
        "batch_scoring",
        {"rows_4x": times_4x * BLOCK_ROWS, "block_rows": BLOCK_ROWS, "rows_per_batch": BATCH_ROWS},
    )
    block = make_block(BLOCK_ROWS)
    measured: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        scratch = Path(tmp)
        settings = Settings.from_env(
            {}, home=scratch / "home", rules_path=scratch / "ephemerid.yaml", local_slots=2
        )
        service = build_service(settings)
        try:
            common.console.print("[dim]training the model (a real train job)...[/dim]")
            train(service, scratch)
            version = service.models.resolve(ModelRef(name="tabular", alias="production"))
            model_dir = scratch / "model"
            download(service.artifacts, version.files, model_dir)
            for name, fmt, times in runs:
                rows = times * BLOCK_ROWS
                common.console.print(f"[dim]{name}: {rows:,} rows...[/dim]")
                prefix = f"incoming/{name.replace(' ', '-')}"
                write_input(service, f"{prefix}/data.{fmt}", block, times, 0, scratch)
                job = run_job(service, predict_spec(f"{prefix}/"), sample=True)
                checked_rows(service, job["job"], rows)
                measured[name] = _row(job, rows, in_memory(model_dir, block, rows))
                service.artifacts.delete(f"{prefix}/data.{fmt}")
            if not args.no_fanout:
                rows = times_4x * BLOCK_ROWS
                common.console.print(f"[dim]fan-out, 2 shards: {rows:,} rows...[/dim]")
                half = times_4x // 2
                for n in range(2):
                    key = f"incoming/fanout/part-{n}.parquet"
                    write_input(service, key, block, half, n * half * BLOCK_ROWS, scratch)
                job = run_fanout(service, predict_spec("incoming/fanout/", shards=2))
                checked_rows(service, job["job"], rows)
                measured["parquet 4x, 2 shards"] = _row(
                    job, rows, in_memory(model_dir, block, rows)
                )
        finally:
            service.close()
    report(measured)
    one, four = measured["parquet 1x"], measured["parquet 4x"]
    growth = {
        who: round(four["peak_mib"][who] / max(one["peak_mib"][who], 1), 3)
        for who in ("runner", "worker")
    }
    run.save(
        {
            "sizes": measured,
            "ratio_parquet_4x": four["ratio"],
            "peak_growth_4x_over_1x": growth,
            "goal_ratio": GOAL_RATIO,
            "goal_met": four["ratio"] >= GOAL_RATIO and max(growth.values()) <= GOAL_GROWTH,
            "device": common.gpu_name() or "cpu",
        }
    )


def _row(job: dict[str, Any], rows: int, memory: tuple[float, float]) -> dict[str, Any]:
    memory_rate, memory_cpu = memory
    e2e = rows / job["seconds"]
    row = {
        "rows": rows,
        "end_to_end_s": round(job["seconds"], 2),
        "end_to_end_rows_s": round(e2e),
        "in_memory_rows_s": round(memory_rate),
        "ratio": round(e2e / memory_rate, 4),
        "in_memory_cpu_s": round(memory_cpu, 2),
        "peak_mib": job["peak_mib"],
    }
    result = job.get("result")
    if result is not None and result.finished_at and result.started_at:
        row["entrypoint_s"] = round((result.finished_at - result.started_at).total_seconds(), 2)
    return row


def report(measured: dict[str, dict[str, Any]]) -> None:
    rows = [
        [
            f"{name} ({m['rows']:,} rows)",
            f"{m['end_to_end_s']:.1f}",
            f"{m.get('entrypoint_s', 0):.1f}",
            f"{m['end_to_end_rows_s']:,}",
            f"{m['in_memory_rows_s']:,}",
            f"{m['ratio']:.3f}",
            f"{m['peak_mib']['runner']:.0f}",
            f"{m['peak_mib']['worker']:.0f}",
            f"{m['peak_mib']['runner_cpu_s']:.1f}",
            f"{m['peak_mib']['worker_cpu_s']:.1f}",
            f"{m['in_memory_cpu_s']:.1f}",
        ]
        for name, m in measured.items()
    ]
    four = measured["parquet 4x"]
    common.table(
        f"batch scoring on {common.gpu_name() or 'CPU'} (goal: Parquet end-to-end / in-memory "
        f">= {GOAL_RATIO}): {common.verdict(four['ratio'] >= GOAL_RATIO)}",
        [
            "input",
            "job s",
            "entrypoint s",
            "end-to-end rows/s",
            "in-memory rows/s",
            "ratio",
            "runner peak MiB",
            "worker peak MiB",
            "runner CPU s",
            "worker CPU s",
            "in-memory CPU s",
        ],
        rows,
    )


if __name__ == "__main__":
    main()

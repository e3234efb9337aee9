"""Batch scoring efficiency: examples/tabular/predict.py as a real job, against the model alone.

A real train job (``train.py``, 20,000 rows, 2 epochs) registers ``tabular@production``; then
``predict.py`` scores a CSV in the bucket as a real predict job on the local backend: the runner
stages the input from the bucket, the script reads, scores and writes ``predictions.csv``, and
the runner uploads it. End-to-end rows/s is rows over the time from ``submit()`` to
``result.json``. The baseline is the same model (``predict.Scorer``, the same chunks, the same
threads) scoring the same rows already in memory as a float tensor.

The input is made of one block of random rows (8 features, 4 decimals, no id column, so
predictions are numbered by row) written over and over: building a 5 M-row CSV row by row would
take longer than scoring it. Two sizes run, 1x (``--rows`` / 4) and 4x (``--rows``), to show
that the scoring process's peak memory does not grow with the input (sampled from
``/proc/<pid>/status`` VmHWM every 50 ms).

    python bench/batch_scoring.py                    # 1.25 M and 5 M rows
    python bench/batch_scoring.py --rows 20000000    # 5 M and 20 M rows
    python bench/batch_scoring.py --profile          # also cProfile predict.py on the 1x file
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common

GOAL_RATIO = 0.9
TABULAR = common.ROOT / "examples" / "tabular"
BLOCK_ROWS = 250_000
FEATURES = [f"f{j}" for j in range(8)]


def make_block(rows: int, seed: int = 1) -> tuple[Any, bytes]:
    """``rows`` random rows as float32 (rounded as the CSV holds them) and as CSV lines."""
    import numpy as np

    x = np.round(np.random.default_rng(seed).standard_normal((rows, len(FEATURES))), 4)
    text = io.BytesIO()
    np.savetxt(text, x, fmt="%.4f", delimiter=",")
    return x.astype(np.float32), text.getvalue()


def write_input(service: Any, key: str, block: bytes, times: int, scratch: Path) -> None:
    """Write ``times`` copies of ``block`` under a header, then put the file in the bucket."""
    local = scratch / "input.csv"
    with local.open("wb") as out:
        out.write((",".join(FEATURES) + "\n").encode())
        for _ in range(times):
            out.write(block)
    with local.open("rb") as stream:
        service.artifacts.write(key, stream)
    local.unlink()


class PeakMemory:
    """Samples the peak RSS (VmHWM) of every process in a session until stopped."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.peaks: dict[int, tuple[str, int]] = {}
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
            if int(stat[stat.rindex(")") + 2 :].split()[3]) != self.session:
                return
            status = Path(f"/proc/{pid}/status").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                kib = int(line.split()[1])
                if kib > self.peaks.get(pid, ("", 0))[1]:
                    self.peaks[pid] = (cmdline, kib)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        found = {"runner": 0.0, "predict.py": 0.0}
        for cmdline, kib in self.peaks.values():
            who = "predict.py" if "predict.py" in cmdline else "runner"
            found[who] = max(found[who], kib / 1024)
        return {k: round(v, 1) for k, v in found.items()}


def run_job(service: Any, spec: dict[str, Any], sample: bool = False) -> dict[str, Any]:
    from ephemerid import names
    from ephemerid.artifacts import get_bytes
    from ephemerid.contract import Result
    from ephemerid.spec import JobSpec

    t0 = time.perf_counter()
    job = service.submit(JobSpec.model_validate(spec)).job
    pid = job.handle.get("pid")
    memory = PeakMemory(pid) if sample and pid else None
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


def in_memory(model_dir: Path, block: Any, rows: int, chunk_rows: int) -> float:
    """Rows/s of predict.py's Scorer over ``rows`` rows of ``block``, already in memory."""
    import torch

    sys.path.insert(0, str(TABULAR))
    import predict
    import tabular

    device = tabular.select_device()  # the same device and thread count as the job
    scorer = predict.Scorer(model_dir, device)
    x = torch.from_numpy(block)
    chunks = [x[i : i + chunk_rows] for i in range(0, len(x), chunk_rows)]
    scorer(chunks[0])  # warm up
    done, start = 0, time.perf_counter()
    while done < rows:
        for chunk in chunks:
            take = chunk[: rows - done]
            scorer(take)
            done += len(take)
            if done >= rows:
                break
    return rows / (time.perf_counter() - start)


def profile_script(model_dir: Path, path: Path, chunk_rows: int) -> str:
    """cProfile of predict.score_file on ``path``, in this process: where a job's time goes."""
    sys.path.insert(0, str(TABULAR))
    import predict
    import tabular

    scorer = predict.Scorer(model_dir, tabular.select_device())
    profiler = cProfile.Profile()
    with open(os.devnull, "w", newline="") as out:
        profiler.enable()
        predict.score_file(path, scorer, out, 0, chunk_rows)
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000, help="rows of the 4x input")
    parser.add_argument("--profile", action="store_true", help="cProfile predict.py on 1x")
    args = parser.parse_args()

    from ephemerid.app import build_service
    from ephemerid.settings import Settings

    chunk_rows = 65536  # predict.py's default
    times_4x = max(4, round(args.rows / BLOCK_ROWS / 4) * 4)
    sizes = {"1x": times_4x // 4, "4x": times_4x}
    run = common.Run(
        "batch_scoring",
        {"rows_4x": times_4x * BLOCK_ROWS, "block_rows": BLOCK_ROWS, "chunk_rows": chunk_rows},
    )
    block, block_csv = make_block(BLOCK_ROWS)
    measured: dict[str, dict[str, Any]] = {}
    profile = ""
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        scratch = Path(tmp)
        settings = Settings.from_env(
            {}, home=scratch / "home", rules_path=scratch / "ephemerid.yaml"
        )
        service = build_service(settings)
        try:
            common.console.print("[dim]training the model (a real train job)...[/dim]")
            train(service, scratch)
            from ephemerid.spec import ModelRef

            version = service.models.resolve(ModelRef(name="tabular", alias="production"))
            model_dir = scratch / "model"
            from ephemerid.artifacts import download

            download(service.artifacts, version.files, model_dir)
            for size, times in sizes.items():
                rows = times * BLOCK_ROWS
                common.console.print(f"[dim]{size}: {rows:,} rows...[/dim]")
                key = f"incoming/score-{size}/data.csv"
                write_input(service, key, block_csv, times, scratch)
                job = run_job(
                    service,
                    {
                        "kind": "predict",
                        "code": str(TABULAR),
                        "entrypoint": "predict.py",
                        "inputs": {"data": f"incoming/score-{size}/"},
                        "model": "tabular@production",
                        "compute": {"max_runtime": 1800},
                    },
                    sample=True,
                )
                memory_rate = in_memory(model_dir, block, rows, chunk_rows)
                measured[size] = _row(job, rows, memory_rate, service)
                if args.profile and size == "1x":
                    local = scratch / "profile.csv"
                    with service.artifacts.open_read(key) as src, local.open("wb") as dst:
                        dst.write(src.read())
                    profile = profile_script(model_dir, local, chunk_rows)
                    local.unlink()
                service.artifacts.delete(key)
        finally:
            service.close()
    report(measured)
    if profile:
        common.console.print("[bold]cProfile of predict.score_file on the 1x input[/bold]")
        print(profile)
    one, four = measured["1x"], measured["4x"]
    growth = four["peak_mib"]["predict.py"] / max(one["peak_mib"]["predict.py"], 1)
    run.save(
        {
            "sizes": measured,
            "ratio_4x": four["ratio"],
            "peak_growth_4x_over_1x": round(growth, 3),
            "goal_ratio": GOAL_RATIO,
            "goal_met": four["ratio"] >= GOAL_RATIO,
            "device": common.gpu_name() or "cpu",
            "profile": profile,
        }
    )


def _row(job: dict[str, Any], rows: int, memory_rate: float, service: Any) -> dict[str, Any]:

    result = job["result"]
    assert result.finished_at is not None and result.started_at is not None
    entry = result.finished_at - result.started_at
    e2e = rows / job["seconds"]
    return {
        "rows": rows,
        "end_to_end_s": round(job["seconds"], 2),
        "entrypoint_s": round(entry.total_seconds(), 2),
        "end_to_end_rows_s": round(e2e),
        "script_loop_rows_s": round(result.metrics.get("rows_per_second", 0)),
        "in_memory_rows_s": round(memory_rate),
        "ratio": round(e2e / memory_rate, 4),
        "script_loop_ratio": round(result.metrics.get("rows_per_second", 0) / memory_rate, 4),
        "peak_mib": job["peak_mib"],
    }


def report(measured: dict[str, dict[str, Any]]) -> None:
    rows = [
        [
            f"{size} ({m['rows']:,} rows)",
            f"{m['end_to_end_s']:.1f}",
            f"{m['end_to_end_rows_s']:,}",
            f"{m['script_loop_rows_s']:,}",
            f"{m['in_memory_rows_s']:,}",
            f"{m['ratio']:.3f}",
            f"{m['peak_mib']['predict.py']:.0f}",
            f"{m['peak_mib']['runner']:.0f}",
        ]
        for size, m in measured.items()
    ]
    four = measured["4x"]
    common.table(
        f"batch scoring on {common.gpu_name() or 'CPU'} (goal: end-to-end / in-memory >= "
        f"{GOAL_RATIO}): {common.verdict(four['ratio'] >= GOAL_RATIO)}",
        [
            "input",
            "job s",
            "end-to-end rows/s",
            "script loop rows/s",
            "in-memory rows/s",
            "ratio",
            "predict.py peak MiB",
            "runner peak MiB",
        ],
        rows,
    )


if __name__ == "__main__":
    main()

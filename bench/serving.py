"""Serving: the prediction service under a bounded load from another process, against the model.

The model is the tabular example's network (8 float features, hidden 64, 3 classes; untrained:
its predict costs what a trained one's does), saved as ``train.py`` saves one and registered as
``tabular`` versions 1 and 2 in a fresh home; the service (``python -m ephemerid.serving`` with
``examples/tabular/predict.py``) runs as its own process, its model in its worker process
(torch limited to ``--threads`` intra-op threads, 1 by default, as in the baseline). This
process sends a fixed count of requests (``--requests``, each ``--rows`` rows of JSON) at 1, 8
and 64 concurrent callers, each caller one keep-alive connection on 127.0.0.1, with
micro-batching on (the defaults: max_batch_rows 4096, max_wait_ms 2) and off
(max_batch_rows 1). The baseline is the same ``load``/``predict`` pair in this process on the
same rows, one call per request's rows: its p50 latency and rows/s.

Then the switch: 8 callers send requests while version 2 is promoted (the service polls the
alias every 0.5 s); the switch time is from the promotion to the first answer from version 2,
and every request of the run is counted, failed ones named.

    python bench/serving.py                     # 2000 requests of 1 row per level
    python bench/serving.py --rows 32           # bigger requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

TABULAR = common.ROOT / "examples" / "tabular"
FEATURES = [f"f{j}" for j in range(8)]
KEY = "bench-key-0123456789"
LEVELS = (1, 8, 64)
ANSWER = {"prediction", "probability"}  # the fields of each answered row
GOAL_OVERHEAD_MS = 2.0
GOAL_ROWS_RATIO = 0.8
# The entry the service runs: the example's pair, with torch's intra-op threads set after load
# (tabular.select_device takes min(4, cores); on 2 busy cores a batch of 8 rows then took 10x
# one row's time, the threads waking each other): --threads, the same for the baseline.
ENTRY = """
import sys
sys.path.insert(0, {tabular!r})
import torch
from predict import load as _load, predict  # noqa: F401


def load(model_dir):
    model = _load(model_dir)
    torch.set_num_threads({threads})
    return model
"""


def make_home(root: Path) -> tuple[Path, Any]:
    """A home with tabular versions 1 (production) and 2, the same untrained network."""
    sys.path.insert(0, str(TABULAR))
    import tabular
    import torch

    from ephemerid.artifacts import open_artifacts, upload_dir
    from ephemerid.models import ModelRegistry
    from ephemerid.settings import Settings

    model_dir = root / "model"
    model_dir.mkdir()
    torch.manual_seed(0)
    torch.save(tabular.build_model(8, 64, 3).state_dict(), model_dir / "model.pt")
    meta = {"features": FEATURES, "classes": 3, "hidden": 64, "mean": [0.0] * 8, "std": [1.0] * 8}
    (model_dir / "model.json").write_text(json.dumps(meta))
    settings = Settings.from_env({}, home=root / "home")
    artifacts = open_artifacts(settings.artifacts_url)
    upload_dir(artifacts, model_dir, "runs/bench-train/outputs/model")
    models = ModelRegistry(artifacts)
    for job in ("bench-train", "bench-train-2"):
        models.register("tabular", "runs/bench-train/outputs/model", job_id=job, metrics={})
    models.promote("tabular", 1, "production")
    return model_dir, models


def write_entry(code: Path, threads: int) -> Path:
    code.mkdir(parents=True, exist_ok=True)
    (code / "serve_predict.py").write_text(ENTRY.format(tabular=str(TABULAR), threads=threads))
    return code


def start_service(home: Path, **settings: str) -> tuple[subprocess.Popen[str], str]:
    env = {
        **os.environ,
        "EPHEMERID_HOME": str(home),
        "EPHEMERID_SERVING_MODEL": "tabular@production",
        "EPHEMERID_SERVING_KEYS": f"bench={KEY}",
        "EPHEMERID_SERVING_PORT": "0",
        "EPHEMERID_SERVING_CODE": str(home.parent / "code"),
        "EPHEMERID_SERVING_ENTRYPOINT": "serve_predict.py",
        "EPHEMERID_SERVING_RATE_PER_S": "1000000",
        "EPHEMERID_SERVING_BURST": "1000000",
        "EPHEMERID_SERVING_POLL_S": "0.5",
        **settings,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ephemerid.serving"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the service did not start")
    return proc, json.loads(line)["url"]


def body_of(rows: int, seed: int) -> bytes:
    values = [
        {f: round(((seed * 31 + r * 7 + j) % 97) / 48.0 - 1.0, 4) for j, f in enumerate(FEATURES)}
        for r in range(rows)
    ]
    return json.dumps({"rows": values}).encode()


def request_of(host: str, path: str, body: bytes) -> bytes:
    """A whole POST, head and body, encoded once and sent as it is on every use."""
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\nx-ephemerid-key: {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Caller:
    """One keep-alive HTTP/1.1 connection, written by hand so the load costs little CPU: a
    pre-encoded request written in one go, the answer's head read in one call and only its
    status, Content-Length and model version parsed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, str, bytes]:
        """The status, the x-ephemerid-model-version and the body of the answer to ``request``."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        length, version = 0, ""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"x-ephemerid-model-version":
                version = value.strip().decode()
        data = await self.reader.readexactly(length) if length else b""
        return int(head[9:12]), version, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def checked(status: int, data: bytes, rows: int) -> str:
    """'' for a 200 with ``rows`` rows, each a prediction and its probability; else what is
    wrong (the load's answers are checked, not only counted)."""
    if status != 200:
        return str(status)
    answered = json.loads(data)["rows"]
    if len(answered) != rows or any(row.keys() != ANSWER for row in answered):
        return f"200 with {len(answered)} rows for {rows}: {data[:80]!r}"
    return ""


async def load(
    url: str,
    requests: int,
    callers: int,
    rows: int,
    stop: asyncio.Event | None = None,
    versions: list[tuple[float, str]] | None = None,
) -> dict[str, Any]:
    """``requests`` requests over ``callers`` connections (or until ``stop``): latencies, fails;
    ``versions`` is told (when, which version) of each answer as it comes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    failed: list[str] = []
    versions = [] if versions is None else versions
    left = [requests]
    path = "/v1/models/tabular:predict"
    requests_ = [request_of(host, path, body_of(rows, i)) for i in range(64)]

    async def one(index: int) -> None:
        caller = Caller(host, int(port))
        n = 0
        while (stop is None and left[0] > 0) or (stop is not None and not stop.is_set()):
            left[0] -= 1
            n += 1
            start = time.perf_counter()
            try:
                status, version, data = await caller.send(requests_[(index + n) % 64])
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                failed.append(repr(exc))
                caller = Caller(host, int(port))
                continue
            latencies.append(time.perf_counter() - start)
            versions.append((time.perf_counter(), version))
            if wrong := checked(status, data, rows):
                failed.append(wrong)
        await caller.close()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(callers)))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    done = len(latencies)
    return {
        "callers": callers,
        "requests": done,
        "failed": len(failed),
        "failures": failed[:5],
        "seconds": round(seconds, 3),
        "req_s": round(done / seconds, 1),
        "rows_s": round(done * rows / seconds, 1),
        "p50_ms": round(common.percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(common.percentile(latencies, 99) * 1000, 3),
        "load_cpu_ms_per_request": round(cpu * 1000 / max(done, 1), 3),  # this process's
    }


def in_process(model_dir: Path, requests: int, rows: int, threads: int) -> dict[str, Any]:
    """The same pair here: one predict call per request's rows, the same JSON rows as Arrow."""
    import predict
    import pyarrow as pa
    import torch

    model = predict.load(model_dir)
    torch.set_num_threads(threads)
    tables = [pa.Table.from_pylist(json.loads(body_of(rows, i))["rows"]) for i in range(64)]
    for table in tables:
        predict.predict(model, table)
    latencies = []
    started = time.perf_counter()
    for n in range(requests):
        start = time.perf_counter()
        predict.predict(model, tables[n % 64])
        latencies.append(time.perf_counter() - start)
    seconds = time.perf_counter() - started
    return {
        "p50_ms": round(common.percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(common.percentile(latencies, 99) * 1000, 3),
        "req_s": round(requests / seconds, 1),
        "rows_s": round(requests * rows / seconds, 1),
    }


def measure(home: Path, requests: int, rows: int, **settings: str) -> list[dict[str, Any]]:
    proc, url = start_service(home, **settings)
    try:
        asyncio.run(load(url, 200, 8, rows))  # warm up
        found = []
        for callers in LEVELS:
            found.append(asyncio.run(load(url, requests, callers, rows)))
        return found
    finally:
        proc.terminate()
        proc.wait(60)


async def _switch_run(url: str, models: Any, rows: int) -> dict[str, Any]:
    """8 callers while version 2 is promoted: the time to its first answer, and the fails."""
    stop = asyncio.Event()
    versions: list[tuple[float, str]] = []
    task = asyncio.create_task(load(url, 0, 8, rows, stop, versions))
    await asyncio.sleep(2.0)
    promoted = time.perf_counter()
    await asyncio.to_thread(models.promote, "tabular", 2, "production")
    deadline = promoted + 120
    while not any(v == "2" for _, v in versions) and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # and 2 s on the new version, the old one retired meanwhile
    stop.set()
    result = await task
    firsts = [t for t, v in versions if v == "2"]
    result["switch_s"] = round(min(firsts) - promoted, 3) if firsts else None
    result["answers_by_version"] = {v: sum(1 for _, w in versions if w == v) for v in ("1", "2")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per level")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the model")
    args = parser.parse_args()
    settings = {"requests": args.requests, "rows": args.rows, "threads": args.threads}
    run = common.Run("serving", {**settings, "levels": LEVELS})
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, models = make_home(Path(scratch))
        home = Path(scratch) / "home"
        write_entry(Path(scratch) / "code", args.threads)
        base = in_process(model_dir, args.requests, args.rows, args.threads)
        batched = measure(home, args.requests, args.rows)
        unbatched = measure(home, args.requests, args.rows, EPHEMERID_SERVING_MAX_BATCH_ROWS="1")
        switched = asyncio.run(_switch_with_service(home, models, args.rows))
    report(base, batched, unbatched, switched)
    run.save({"in_process": base, "batched": batched, "unbatched": unbatched, "switch": switched})


async def _switch_with_service(home: Path, models: Any, rows: int) -> dict[str, Any]:
    proc, url = await asyncio.to_thread(start_service, home)
    try:
        return await _switch_run(url, models, rows)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)


def report(
    base: dict[str, Any],
    batched: list[dict[str, Any]],
    unbatched: list[dict[str, Any]],
    switched: dict[str, Any],
) -> None:
    rows = [
        [
            "in-process predict",
            "1",
            base["p50_ms"],
            base["p99_ms"],
            base["req_s"],
            base["rows_s"],
            "-",
            0,
        ]
    ]
    for label, found in (("service, batching", batched), ("service, no batching", unbatched)):
        for r in found:
            ratio = round(r["rows_s"] / base["rows_s"], 2)
            rows.append(
                [
                    label,
                    r["callers"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["req_s"],
                    r["rows_s"],
                    ratio,
                    r["failed"],
                ]
            )
    common.table(
        "serving: latency and throughput",
        ["", "callers", "p50 ms", "p99 ms", "req/s", "rows/s", "x in-process rows/s", "failed"],
        rows,
    )
    overhead = batched[0]["p50_ms"] - base["p50_ms"]
    ratio = batched[-1]["rows_s"] / base["rows_s"]
    common.console.print(
        f"p50 overhead at 1 caller {overhead:.3f} ms (goal <= {GOAL_OVERHEAD_MS}): "
        f"{common.verdict(overhead <= GOAL_OVERHEAD_MS)}; rows/s at 64 callers with batching "
        f"{ratio:.2f} of in-process (goal >= {GOAL_ROWS_RATIO}): "
        f"{common.verdict(ratio >= GOAL_ROWS_RATIO)}"
    )
    common.console.print(
        f"switch under 8 callers: {switched['switch_s']} s from promotion to the first answer "
        f"from version 2; {switched['requests']} requests, {switched['failed']} failed: "
        f"{common.verdict(switched['failed'] == 0 and switched['switch_s'] is not None)}"
    )


if __name__ == "__main__":
    main()

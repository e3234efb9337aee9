"""Dispatch: blob-created events through the real function handler, with redeliveries.

Every event goes through the ``on_blob_created`` function that ``ephemerid.functions.register``
puts on a real ``azure.functions.FunctionApp``, as the Functions host calls it (an
``InputStream`` carrying the Event Grid ETag), then the rules, ``submit()``, the job store and
``provision``. Only the compute is replaced: ``RecordingCompute`` below implements the
``ComputeBackend`` port and counts provisions per job id, so a duplicate provision shows.

Half the events (by default) are redeliveries of a blob already delivered, shuffled within
windows of 16 so that a redelivery often arrives while the first delivery is still being
handled by another worker. Each store runs in its own process, so peak RSS is its own.

    python bench/dispatch.py                       # SQLite, then Azure Table on Azurite
    python bench/dispatch.py --stores sqlite --events 2000
    python bench/dispatch.py --stores sqlite --profile   # cProfile, one worker
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import common

GOAL_EVENTS_S = 2000.0
GOAL_P99_MS = 5.0
WINDOW = 16  # redeliveries are shuffled among this many neighbouring events
WARMUP = 100  # distinct blobs handled before timing starts (imports, first connections)

RULES = """
rules:
  - name: train-on-upload
    blob: incoming/data/{name}.csv
    job:
      kind: train
      name: train-{name}
      code: ./code
      entrypoint: job.py
      inputs: {data: "{uri}"}
"""


class RecordingCompute:
    """A ComputeBackend that rents nothing and counts provisions per job id.

    Registered as ``local``, the backend a spec without ``compute.backend`` resolves to.
    """

    name = "local"

    def __init__(self) -> None:
        self.provisions: Counter[str] = Counter()
        self._lock = threading.Lock()

    def check(self, spec: Any) -> None:
        """Anything the local backend runs, this one takes."""

    def provision(self, job: Any) -> Any:
        from ephemerid.compute import Handle

        with self._lock:
            self.provisions[job.id] += 1
            count = self.provisions[job.id]
        return Handle(self.name, job.id, {"provision": count})

    def poll(self, handle: Any) -> Any:
        from ephemerid.compute import ComputeStatus

        known = handle.job_id in self.provisions
        return ComputeStatus.RUNNING if known else ComputeStatus.GONE

    def teardown(self, handle: Any) -> bool:
        return True

    def list_owned(self) -> list[Any]:
        from ephemerid.compute import Handle

        with self._lock:
            return [Handle(self.name, job_id) for job_id in self.provisions]

    def close(self) -> None:
        """Nothing to close: it holds no connections."""


def deliveries(keys: list[str], events: int, seed: int) -> list[str]:
    """``events`` deliveries of ``keys``: each key once, the rest redeliveries, near the first."""
    rng = random.Random(seed)
    extra = [rng.choice(keys) for _ in range(events - len(keys))]
    position = {key: i for i, key in enumerate(keys)}
    order = sorted([*keys, *extra], key=position.__getitem__)
    shuffled: list[str] = []
    for start in range(0, len(order), WINDOW):
        window = order[start : start + WINDOW]
        rng.shuffle(window)
        shuffled += window
    return shuffled


def build(store_kind: str, root: Path, unique: int) -> tuple[Any, Any, Any, list[str]]:
    """A service on ``store_kind`` with a recording backend, the function, and the blob keys."""
    import azure.functions as func

    from ephemerid.artifacts import open_artifacts, put_bytes
    from ephemerid.functions import register
    from ephemerid.functions.handlers import Handlers
    from ephemerid.rules import Rules
    from ephemerid.service import Service
    from ephemerid.settings import Settings
    from ephemerid.store import open_store

    (root / "code").mkdir(parents=True)
    (root / "code" / "job.py").write_text("print('trained')\n")
    (root / "ephemerid.yaml").write_text(RULES)
    settings = Settings.from_env({}, home=root / "home", rules_path=root / "ephemerid.yaml")
    if store_kind == "sqlite":
        store = open_store(f"sqlite://{root / 'home' / 'jobs.db'}")
    else:
        connection = {"EPHEMERID_STORAGE": os.environ["AZURITE_CONNECTION_STRING"]}
        store = open_store(f"table://bench{uuid.uuid4().hex[:12]}", connection)
    artifacts = open_artifacts(f"file://{root / 'bucket'}")
    keys = [f"incoming/data/d{i:06}.csv" for i in range(unique + WARMUP)]
    for key in keys:
        put_bytes(artifacts, key, b"a,b\n1,2\n")
    compute = RecordingCompute()
    service = Service(store, artifacts, {"local": compute}, settings)
    handlers = Handlers(service, Rules.load(root / "ephemerid.yaml"))
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, lambda: handlers)
    function = next(
        f.get_user_function()
        for f in app.get_functions()
        if f.get_function_name() == "on_blob_created"
    )
    return service, compute, function, keys


def event(artifacts: Any, key: str) -> Any:
    """The blob event as the Functions host hands it over (Event Grid source: ETag included)."""
    from azure.functions.blob import InputStream

    etag = artifacts.stat(key).etag
    return InputStream(
        data=b"", name=key, uri=artifacts.uri(key), length=8, blob_properties={"ETag": f'"{etag}"'}
    )


def run_one(store_kind: str, events: int, workers: int, redelivery: float, profile: bool) -> dict:
    unique = max(1, round(events * (1 - redelivery)))
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        service, compute, function, keys = build(store_kind, Path(tmp), unique)
        inputs = {key: event(service.artifacts, key) for key in keys}
        for key in keys[unique:]:  # warm up on blobs that are not part of the measured run
            function(inputs[key])
        order = [inputs[k] for k in deliveries(keys[:unique], events, seed=8)]
        latencies: list[float] = []
        errors: list[str] = []
        counter = itertools.count()
        profiler = cProfile.Profile() if profile else None

        def worker() -> None:
            mine = []
            while (i := next(counter)) < len(order):
                start = time.perf_counter()
                try:
                    function(order[i])
                except Exception as exc:  # counted and shown, never hidden
                    errors.append(f"{type(exc).__name__}: {exc}")
                mine.append(time.perf_counter() - start)
            latencies.extend(mine)

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
            worker()
            profiler.disable()
        else:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        wall = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        measured = {k: n for k, n in compute.provisions.items()}
        jobs = service.store.list()
        service.close()
    warm_ids = len(keys) - unique
    result = {
        "store": store_kind,
        "events": events,
        "unique_blobs": unique,
        "workers": 1 if profile else workers,
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall, 1),
        "cpu_ms_per_event": round(cpu / events * 1000, 3),
        "latency_ms": {k: round(v * 1000, 3) for k, v in common.summary(latencies).items()}
        | {"n": len(latencies)},
        "jobs_in_store": len(jobs) - warm_ids,
        "jobs_provisioned": len(measured) - warm_ids,
        "duplicate_provisions": sum(n - 1 for n in measured.values()),
        "errors": len(errors),
        "first_errors": errors[:3],
        "peak_rss_mib": round(common.peak_rss_mib(), 1),
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        result["profile"] = text.getvalue()
    return result


def child(args: argparse.Namespace) -> None:
    result = run_one(args.child, args.events, args.workers, args.redelivery, args.profile)
    Path(args.out).write_text(json.dumps(result))


def spawn(store_kind: str, args: argparse.Namespace, env: dict[str, str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = Path(out.name)
    command = [
        sys.executable, __file__, "--child", store_kind, "--out", str(path),
        "--events", str(args.events), "--workers", str(args.workers),
        "--redelivery", str(args.redelivery),
    ] + (["--profile"] if args.profile else [])  # fmt: skip
    common.console.print(f"[dim]{store_kind}: {args.events} events...[/dim]")
    subprocess.run(command, env=env, check=True)
    try:
        return dict(json.loads(path.read_text()))
    finally:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--redelivery", type=float, default=0.5, help="share of redeliveries")
    parser.add_argument("--stores", default="sqlite,table", help="sqlite, table or both")
    parser.add_argument("--profile", action="store_true", help="cProfile one worker, print top")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    run = common.Run(
        "dispatch-profile" if args.profile else "dispatch",
        {k: getattr(args, k) for k in ("events", "workers", "redelivery", "stores", "profile")},
    )
    results = []
    for store_kind in stores:
        if store_kind == "table":
            results.append(with_azurite(lambda env: spawn("table", args, env)))
        else:
            results.append(spawn(store_kind, args, dict(os.environ)))
    report(results, args)
    for result in results:
        if result.get("profile"):
            common.console.print(f"[bold]cProfile, {result['store']}[/bold]")
            print(result["profile"])
    run.save({"stores": results})


def with_azurite(body: Any) -> dict:
    from ephemerid.testing import azurite

    if os.environ.get(azurite.ENV):
        return dict(body(dict(os.environ)))
    binary = azurite.find_binary(common.ROOT)
    if binary is None:
        raise SystemExit("Azurite is not installed: run `npm ci` (or `make bench`)")
    with azurite.running(binary) as emulator:
        return dict(body({**os.environ, azurite.ENV: emulator.connection_string}))


def report(results: list[dict], args: argparse.Namespace) -> None:
    rows = []
    for r in results:
        lat = r["latency_ms"]
        goal = r["events_per_s"] >= GOAL_EVENTS_S and lat["p99"] <= GOAL_P99_MS
        rows.append(
            [
                r["store"],
                f"{r['events_per_s']:,.0f}",
                f"{lat['p50']:.2f}",
                f"{lat['p99']:.2f}",
                f"{r['cpu_ms_per_event']:.2f}",
                r["duplicate_provisions"],
                f"{r['jobs_provisioned']}/{r['unique_blobs']}",
                r["errors"],
                f"{r['peak_rss_mib']:.0f}",
                common.verdict(goal and r["duplicate_provisions"] == 0)
                if r["store"] == "sqlite"
                else "-",
            ]
        )
    if len(results) == 2:
        a, b = results
        rows.append(
            [
                f"{b['store']}/{a['store']}",
                f"{b['events_per_s'] / a['events_per_s']:.2f}x",
                f"{b['latency_ms']['p50'] / a['latency_ms']['p50']:.1f}x",
                f"{b['latency_ms']['p99'] / a['latency_ms']['p99']:.1f}x",
                f"{b['cpu_ms_per_event'] / a['cpu_ms_per_event']:.1f}x",
                "",
                "",
                "",
                "",
                "",
            ]
        )
    common.table(
        f"dispatch: {args.events:,} blob events, {args.redelivery:.0%} redeliveries, "
        f"{1 if args.profile else args.workers} workers "
        f"(goal, SQLite: >= {GOAL_EVENTS_S:,.0f} events/s, p99 <= {GOAL_P99_MS} ms, 0 duplicates)",
        [
            "store",
            "events/s",
            "p50 ms",
            "p99 ms",
            "CPU ms/event",
            "dup. provisions",
            "jobs provisioned",
            "errors",
            "peak RSS MiB",
            "goal",
        ],
        rows,
    )


if __name__ == "__main__":
    main()

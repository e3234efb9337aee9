"""Dispatch: blob-created events through the real function handler, with redeliveries.

Every event goes through the ``on_blob_created`` function that ``ephemerid.functions.register``
puts on a real ``azure.functions.FunctionApp``, as the Functions host calls it (an
``InputStream`` carrying the Event Grid ETag), then the rules, ``submit()``, the job store and
``provision``. Only the compute is replaced: ``RecordingCompute`` below implements the
``ComputeBackend`` port and counts provisions per job id, so a duplicate provision shows.

Half the events (by default) are redeliveries of a blob already delivered, shuffled within
windows of 16 so that a redelivery often arrives while the first delivery is still being
handled by another worker. Each store runs in its own process, so peak RSS is its own.

``--processes 1,2`` (the default) runs the workers as one process, then spread over two forked
processes sharing the one SQLite file and bucket, as the Functions host runs several worker
processes (``FUNCTIONS_WORKER_PROCESS_COUNT``); duplicates are counted over all of them.

Right after each SQLite run comes its floor, in the same run: per event only the SQLite
statements the store executes (a first delivery: INSERT OR IGNORE and two compare-and-swap
UPDATEs; a redelivery: one lookup), on the rows the full path stored, with the same event mix,
processes and threads. The full path is reported as a ratio to it.

    python bench/dispatch.py                       # SQLite, then Azure Table on Azurite
    python bench/dispatch.py --stores sqlite --events 2000
    python bench/dispatch.py --stores sqlite --processes 2   # 8 workers as 2 processes x 4
    python bench/dispatch.py --stores sqlite --profile   # cProfile, one worker
    python bench/dispatch.py --stores sqlite --tmpdir /dev/shm   # files in memory: no disk
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import multiprocessing
import os
import pstats
import random
import resource
import sqlite3
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


def prepare(root: Path, keys: list[str]) -> None:
    """The code folder, the rules and the blobs: what every worker process shares."""
    from ephemerid.artifacts import open_artifacts, put_bytes

    (root / "code").mkdir(parents=True)
    (root / "code" / "job.py").write_text("print('trained')\n")
    (root / "ephemerid.yaml").write_text(RULES)
    artifacts = open_artifacts(f"file://{root / 'bucket'}")
    for key in keys:
        put_bytes(artifacts, key, b"a,b\n1,2\n")


def build(store_url: str, root: Path) -> tuple[Any, RecordingCompute, Any]:
    """A service on ``store_url`` with a recording backend, and its blob-created function."""
    import azure.functions as func

    from ephemerid.artifacts import open_artifacts
    from ephemerid.functions import register
    from ephemerid.functions.handlers import Handlers
    from ephemerid.rules import Rules
    from ephemerid.service import Service
    from ephemerid.settings import Settings
    from ephemerid.store import open_store

    settings = Settings.from_env({}, home=root / "home", rules_path=root / "ephemerid.yaml")
    connection = {"EPHEMERID_STORAGE": os.environ.get("AZURITE_CONNECTION_STRING", "")}
    store = open_store(store_url, connection)
    artifacts = open_artifacts(f"file://{root / 'bucket'}")
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
    return service, compute, function


def event(artifacts: Any, key: str) -> Any:
    """The blob event as the Functions host hands it over (Event Grid source: ETag included)."""
    from azure.functions.blob import InputStream

    etag = artifacts.stat(key).etag
    return InputStream(
        data=b"", name=key, uri=artifacts.uri(key), length=8, blob_properties={"ETag": f'"{etag}"'}
    )


# -- the floor: the same SQLite statements per event, and nothing around them -----------------
# Statements, schema and pragmas as in src/ephemerid/store/sqlite.py (kept in step by hand).

FLOOR_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
    version INTEGER NOT NULL, open INTEGER NOT NULL, created_at TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(open) WHERE open = 1;
"""
FLOOR_INSERT = (
    "INSERT OR IGNORE INTO jobs (id, key, state, version, open, created_at, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
FLOOR_UPDATE = (
    "UPDATE jobs SET state = ?, version = ?, open = ?, data = ? WHERE id = ? AND version = ?"
)
FLOOR_LOOKUP = "SELECT data FROM jobs WHERE id = ?"


def floor_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Floor:
    """Per event what the SQLite store executes, on rows the full path stored: for a first
    delivery INSERT OR IGNORE then two compare-and-swap UPDATEs (ACCEPTED -> PROVISIONING ->
    RUNNING), for a redelivery one lookup. Writers of a process take turns on one lock, as in
    the store."""

    def __init__(self, path: Path, rows: list[tuple[str, str, str, str]]) -> None:
        self.path, self.rows = path, rows
        self.local = threading.local()
        self.write = threading.Lock()

    def __call__(self, item: tuple[int, bool]) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = floor_connect(self.path)
        job_id, key, created_at, data = self.rows[item[0]]
        if not item[1]:
            conn.execute(FLOOR_LOOKUP, (job_id,)).fetchone()
            return
        with self.write:
            conn.execute(FLOOR_INSERT, (job_id, key, "ACCEPTED", 1, True, created_at, data))
        for state, version in (("PROVISIONING", 1), ("RUNNING", 2)):
            with self.write:
                cursor = conn.execute(
                    FLOOR_UPDATE, (state, version + 1, True, data, job_id, version)
                )
            assert cursor.rowcount == 1, f"floor: compare-and-swap on {job_id} lost"


def floor_items(order: list[str], keys: list[str]) -> list[tuple[int, bool]]:
    """The same event mix for the floor: (row of the blob, whether it is the first delivery)."""
    index = {key: i for i, key in enumerate(keys)}
    seen: set[str] = set()
    items = []
    for key in order:
        items.append((index[key], key not in seen))
        seen.add(key)
    return items


# -- running the events: N processes with threads each, one shared counter ----------------------


class Counter1:
    """The next event's index, for the threads of this one process."""

    def __init__(self) -> None:
        self._it = itertools.count()

    def take(self) -> int:
        return next(self._it)


class SharedCounter:
    """The next event's index, shared by every process (and their threads)."""

    def __init__(self, ctx: Any) -> None:
        self._value = ctx.Value("q", 0)

    def take(self) -> int:
        with self._value.get_lock():
            i = int(self._value.value)
            self._value.value = i + 1
        return i


def drive(handle: Any, items: list[Any], threads: int, counter: Any, profile: bool) -> dict:
    """Hand ``items`` to ``threads`` threads calling ``handle``; timings, CPU and errors."""
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        mine = []
        while (i := counter.take()) < len(items):
            start = time.perf_counter()
            try:
                handle(items[i])
            except Exception as exc:  # counted and shown, never hidden
                errors.append(f"{type(exc).__name__}: {exc}")
            mine.append(time.perf_counter() - start)
        latencies.extend(mine)

    profiler = cProfile.Profile() if profile else None
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
        worker()
        profiler.disable()
    else:
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    end = time.perf_counter()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "start": start,
        "end": end,
        "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "latencies": latencies,
        "errors": errors,
        "peak_rss_mib": common.peak_rss_mib(),
    }
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
        out["profile"] = text.getvalue()
    return out


def full_part(job: dict, counter: Any, barrier: Any) -> dict:
    """One process of the full path: its own service on the shared store file and bucket."""
    service, compute, function = build(job["store_url"], job["root"])
    for warm in job["warm"]:  # imports, first connections: blobs outside the measured run
        function(warm)
    if barrier is not None:
        barrier.wait()
    out = drive(function, job["order"], job["threads"], counter, job["profile"])
    out["provisions"] = dict(compute.provisions)
    service.close()
    return out


def floor_part(job: dict, counter: Any, barrier: Any) -> dict:
    floor = Floor(job["db"], job["rows"])
    if barrier is not None:
        barrier.wait()
    return drive(floor, job["items"], job["threads"], counter, False)


def in_processes(part: Any, jobs: list[dict]) -> list[dict]:
    """``part`` once per job: here for one, else in forked processes started together."""
    if len(jobs) == 1:
        return [part(jobs[0], Counter1(), None)]
    ctx = multiprocessing.get_context("fork")
    counter, barrier, results = SharedCounter(ctx), ctx.Barrier(len(jobs)), ctx.Queue()

    def run(n: int) -> None:
        results.put((n, part(jobs[n], counter, barrier)))

    procs = [ctx.Process(target=run, args=(n,)) for n in range(len(jobs))]
    for proc in procs:
        proc.start()
    collected = dict(results.get() for _ in procs)
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a worker process exited with {proc.exitcode}")
    return [collected[n] for n in range(len(jobs))]


def merged(parts: list[dict], events: int) -> dict:
    wall = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    latencies = [x for p in parts for x in p["latencies"]]
    errors = [e for p in parts for e in p["errors"]]
    return {
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall, 1),
        "cpu_ms_per_event": round(sum(p["cpu_s"] for p in parts) / events * 1000, 3),
        "latency_ms": {k: round(v * 1000, 3) for k, v in common.summary(latencies).items()}
        | {"n": len(latencies)},
        "errors": len(errors),
        "first_errors": errors[:3],
        "peak_rss_mib": round(max(p["peak_rss_mib"] for p in parts), 1),
    }


def split(threads: int, processes: int) -> list[int]:
    """``threads`` workers over ``processes`` processes, as evenly as they go."""
    return [threads // processes + (n < threads % processes) for n in range(processes)]


def run_one(store_kind: str, args: argparse.Namespace, processes: int) -> dict:
    events, workers, profile = args.events, args.workers, args.profile
    if profile:
        workers, processes = 1, 1
    if workers < processes:
        raise SystemExit(f"--workers {workers} cannot be spread over {processes} processes")
    unique = max(1, round(events * (1 - args.redelivery)))
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        keys = [f"incoming/data/d{i:06}.csv" for i in range(unique + WARMUP * processes)]
        prepare(root, keys)
        if store_kind == "sqlite":
            store_url = f"sqlite://{root / 'home' / 'jobs.db'}"
        else:
            store_url = f"table://bench{uuid.uuid4().hex[:12]}"
        from ephemerid.artifacts import open_artifacts

        artifacts = open_artifacts(f"file://{root / 'bucket'}")
        inputs = {key: event(artifacts, key) for key in keys}
        order_keys = deliveries(keys[:unique], events, seed=8)
        order = [inputs[k] for k in order_keys]
        warm = keys[unique:]
        jobs = [
            {
                "store_url": store_url,
                "root": root,
                "order": order,
                "threads": threads,
                "profile": profile,
                "warm": [inputs[k] for k in warm[n * WARMUP : (n + 1) * WARMUP]],
            }
            for n, threads in enumerate(split(workers, processes))
        ]
        parts = in_processes(full_part, jobs)
        provisions: Counter[str] = Counter()
        for part in parts:
            provisions.update(part["provisions"])
        result = {
            "store": store_kind,
            "events": events,
            "unique_blobs": unique,
            "workers": workers,
            "processes": processes,
            "threads_per_process": split(workers, processes),
            "folder": {"path": str(root.parent), "filesystem": filesystem(root)},
        } | merged(parts, events)
        warm_ids = len(keys) - unique
        result["jobs_provisioned"] = len(provisions) - warm_ids
        result["duplicate_provisions"] = sum(n - 1 for n in provisions.values())
        if profile:
            result["profile"] = parts[0]["profile"]
        if store_kind == "sqlite":
            with sqlite3.connect(root / "home" / "jobs.db") as conn:
                rows = conn.execute("SELECT id, key, created_at, data FROM jobs").fetchall()
            result["jobs_in_store"] = len(rows) - warm_ids
            if not profile:
                result["floor"] = run_floor(root, rows, order_keys, keys, processes, workers)
                ratio = result["events_per_s"] / result["floor"]["events_per_s"]
                result["ratio_to_floor"] = round(ratio, 3)
    return result


def filesystem(path: Path) -> str:
    """The type of the file system ``path`` is on (``ext4``, ``tmpfs`` ...), from /proc/mounts."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        fields = line.split()
        point = fields[1]
        inside = str(path.resolve()).startswith(point.rstrip("/") + "/")
        if len(fields) > 2 and inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def run_floor(
    root: Path, rows: list[Any], order: list[str], keys: list[str], processes: int, workers: int
) -> dict:
    """The floor, right after the full path: same events, processes and threads, a fresh file."""
    db = root / "floor.db"
    with floor_connect(db) as conn:
        conn.executescript(FLOOR_SCHEMA)
    conn.close()
    items = floor_items(order, keys)
    jobs = [
        {"db": db, "rows": rows, "items": items, "threads": threads}
        for threads in split(workers, processes)
    ]
    parts = in_processes(floor_part, jobs)
    with sqlite3.connect(db) as conn:
        (stored,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE version = 3").fetchone()
    conn.close()
    return merged(parts, len(items)) | {"jobs_in_store": stored}


def child(args: argparse.Namespace) -> None:
    results = [run_one(args.child, args, int(n)) for n in args.processes.split(",")]
    Path(args.out).write_text(json.dumps(results))


def spawn(store_kind: str, args: argparse.Namespace, env: dict[str, str]) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = Path(out.name)
    command = [
        sys.executable, __file__, "--child", store_kind, "--out", str(path),
        "--events", str(args.events), "--workers", str(args.workers),
        "--redelivery", str(args.redelivery), "--processes", args.processes,
    ] + (["--profile"] if args.profile else [])  # fmt: skip
    command += ["--tmpdir", args.tmpdir] if args.tmpdir else []
    common.console.print(f"[dim]{store_kind}: {args.events} events...[/dim]")
    subprocess.run(command, env=env, check=True)
    try:
        return list(json.loads(path.read_text()))
    finally:
        path.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8, help="worker threads in all")
    parser.add_argument(
        "--processes", default="1,2", help="worker processes sharing the workers, e.g. 1 or 1,2"
    )
    parser.add_argument("--redelivery", type=float, default=0.5, help="share of redeliveries")
    parser.add_argument(
        "--tmpdir", help="folder for the run's SQLite file and bucket (default: the system's)"
    )
    parser.add_argument("--stores", default="sqlite,table", help="sqlite, table or both")
    parser.add_argument("--profile", action="store_true", help="cProfile one worker, print top")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        args.processes = "1"
    if args.child:
        child(args)
        return
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    settings = ("events", "workers", "processes", "redelivery", "stores", "profile", "tmpdir")
    run = common.Run(
        "dispatch-profile" if args.profile else "dispatch",
        {k: getattr(args, k) for k in settings},
    )
    results = []
    for store_kind in stores:
        if store_kind == "table":
            results += with_azurite(lambda env: spawn("table", args, env))
        else:
            results += spawn(store_kind, args, dict(os.environ))
    report(results, args)
    for result in results:
        if result.get("profile"):
            common.console.print(f"[bold]cProfile, {result['store']}[/bold]")
            print(result["profile"])
    run.save({"stores": results})


def with_azurite(body: Any) -> list[dict]:
    from ephemerid.testing import azurite

    if os.environ.get(azurite.ENV):
        return list(body(dict(os.environ)))
    binary = azurite.find_binary(common.ROOT)
    if binary is None:
        raise SystemExit("Azurite is not installed: run `npm ci` (or `make bench`)")
    with azurite.running(binary) as emulator:
        return list(body({**os.environ, azurite.ENV: emulator.connection_string}))


def report(results: list[dict], args: argparse.Namespace) -> None:
    rows = []
    for r in results:
        lat, floor = r["latency_ms"], r.get("floor")
        goal = r["events_per_s"] >= GOAL_EVENTS_S and lat["p99"] <= GOAL_P99_MS
        shape = f"{r['processes']}x{'+'.join(map(str, sorted(set(r['threads_per_process']))))}"
        rows.append(
            [
                r["store"],
                shape,
                f"{r['events_per_s']:,.0f}",
                f"{lat['p50']:.2f}",
                f"{lat['p99']:.2f}",
                f"{r['cpu_ms_per_event']:.2f}",
                f"{r['ratio_to_floor']:.3f}" if floor else "-",
                r["duplicate_provisions"],
                f"{r['jobs_provisioned']}",
                r["errors"],
                f"{r['peak_rss_mib']:.0f}",
                common.verdict(goal and r["duplicate_provisions"] == 0)
                if r["store"] == "sqlite"
                else "-",
            ]
        )
        if floor:
            rows.append(
                [
                    "  SQL floor",
                    shape,
                    f"{floor['events_per_s']:,.0f}",
                    f"{floor['latency_ms']['p50']:.2f}",
                    f"{floor['latency_ms']['p99']:.2f}",
                    f"{floor['cpu_ms_per_event']:.2f}",
                    "1",
                    "",
                    f"{floor['jobs_in_store']}",
                    floor["errors"],
                    "",
                    "",
                ]
            )
    common.table(
        f"dispatch: {args.events:,} blob events, {args.redelivery:.0%} redeliveries, "
        f"{1 if args.profile else args.workers} workers in all, "
        f"on {', '.join(sorted({r['folder']['filesystem'] for r in results}))} "
        f"(goal, SQLite: >= {GOAL_EVENTS_S:,.0f} events/s, p99 <= {GOAL_P99_MS} ms, 0 duplicates)",
        [
            "store",
            "proc x thr",
            "events/s",
            "p50 ms",
            "p99 ms",
            "CPU ms/ev",
            "/ floor",
            "dup.",
            "jobs",
            "err.",
            "RSS MiB",
            "goal",
        ],
        rows,
    )


if __name__ == "__main__":
    main()

"""Sweeps on the embedded default: fan-out, slot idle between trials, and the sweep's overhead.

A fresh home in a temporary folder (a folder as the bucket, SQLite, local compute with
``EPHEMERID_LOCAL_SLOTS`` = ``--parallel``). A ``method: random`` sweep of ``--trials`` trials
with ``max_parallel`` = ``--parallel`` is submitted through ``ephemerid.Client().submit_sweep``,
as a notebook does: that call steps the sweep once (its first ``max_parallel`` trials are
submitted and their runners started in the submitting process) and starts the home's agent,
which moves everything after on. This script then only reads the records (every 0.25 s; it never
drives a job, unlike ``Job.wait``, which would if the agent were gone), so **no command runs**
while the trials end and the next ones start. Once the sweep and its trials are settled the
agent is stopped, and every number comes from the records.

Each trial is a real, small training run: linear regression by gradient descent on synthetic
data, ten epochs that share ``--work-s`` seconds of its own time, logging ``val_loss`` per epoch
with ``track.log_metric`` (so the runner uploads metrics while it runs, as a real trial does).

What is measured (all from the trials' records; ``submit`` is the wall time just before
``submit_sweep`` was called):

- **fan-out**: ``submit`` -> the ``max_parallel``-th trial's ``live_at`` (its runner started)
  and ``started_at`` (the runner launched the user's code: that process's own interpreter start
  and imports count in the trial's runtime), the ``max_parallel``-th of each when sorted;
- **slot idle**: a trial after the first ``max_parallel`` only exists once one before it ended
  (the sweep asks for the next trial when it hears of an end), so the k-th such trial, in order
  of ``compute_requested_at``, took the slot of the k-th release, in order of ``released_at``.
  Slot idle is ``requested[max_parallel + k] - released[k]``. The same pairing by ``finished_at``
  (the user's code ended) and ``started_at`` (the next one's began) gives the idle as the slot's
  hardware sees it, split into its parts: result handled (finished -> released), the sweep's
  step (released -> next requested), the runner's start (requested -> live -> started);
- **overhead**: the sweep's wall time (``submit`` -> the sweep's ``finished_at``) over the ideal
  (the sum of the trials' own runtimes, ``started_at`` -> ``finished_at``, divided by
  ``max_parallel``), as a ratio; and per trial the runner's overhead, ``live_at`` ->
  ``started_at`` and ``finished_at`` -> ``released_at`` (split at ``result.json``'s mtime: the
  runner's tail, then the agent's event and completion), p50;
- **the sweep's own work**: how many times its record was written (its version), its size, and
  one step of the ended sweep timed once the agent is stopped: the least an event that steps
  the sweep costs (the study replayed from the record's journal, the summary and lease written).

    python bench/sweeps.py
    python bench/sweeps.py --trials 24 --parallel 4 --work-s 0.7
    python bench/sweeps.py --warm-agent   # the home's agent already running at the submit
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import common

GOAL_FAN_OUT_S = 1.0  # submit -> the max_parallel-th trial running
GOAL_SLOT_IDLE_S = 1.0  # p50, a release -> the next trial's compute requested
POLL_S = 0.25
TRAIN = """
import json, os, pathlib, random, time
from ephemerid import track

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
lr, work_s = float(params["lr"]), float(params["work_s"])
EPOCHS = 10
rng = random.Random(7)
data = [(x, 3.0 * x + 1.0 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(400))]
train, val = data[:300], data[300:]
w = b = 0.0
start = time.monotonic()
for epoch in range(EPOCHS):  # each epoch an equal share of work_s: the same runtime at any lr
    until = start + work_s * (epoch + 1) / EPOCHS
    while time.monotonic() < until:
        for x, y in train:
            error = w * x + b - y
            w, b = w - lr * error * x, b - lr * error
    val_loss = sum((w * x + b - y) ** 2 for x, y in val) / len(val)
    track.log_metric("val_loss", val_loss, step=epoch)
print(f"lr={lr:.4g} epochs={EPOCHS} val_loss={val_loss:.5f}")
"""


def sweep_data(code: Path, trials: int, parallel: int, work_s: float) -> dict[str, Any]:
    return {
        "kind": "sweep",
        "name": "bench-sweep",
        "trial": {"code": str(code), "entrypoint": "train.py", "params": {"work_s": work_s}},
        "search": {
            "method": "random",
            "space": {"lr": {"loguniform": [0.001, 0.1]}},
            "metric": "val_loss",
            "goal": "minimize",
            "max_trials": trials,
            "max_parallel": parallel,
        },
    }


def run(
    root: Path, trials: int, parallel: int, work_s: float, warm_agent: bool = False
) -> dict[str, Any]:
    """Submit the sweep from a fresh home; its record, its trials' and the submit's times.

    With ``warm_agent`` the home's agent is started (and holds its lock) before the submit, as
    after an earlier submit from the same notebook: its start then does not compete with the
    first trials' runners for the CPU."""
    import ephemerid
    from ephemerid.agent import stop
    from ephemerid.agent.control import ensure_running

    code, home = root / "code", root / "home"
    code.mkdir()
    (code / "train.py").write_text(TRAIN)
    for name in [k for k in os.environ if k.startswith("EPHEMERID_")]:
        del os.environ[name]
    os.environ.update(
        EPHEMERID_HOME=str(home),
        EPHEMERID_LOCAL_SLOTS=str(parallel),
        EPHEMERID_AGENT_IDLE_S="30",
        EPHEMERID_RULES=str(root / "no-rules.yaml"),
    )
    with ephemerid.Client() as client:
        if warm_agent:
            ensure_running(client.settings)
        submitted = time.time()
        sweep = client.submit_sweep(sweep_data(code, trials, parallel, work_s))
        returned = time.time()
        try:
            record = _wait_settled(client, sweep.id, timeout=600 + trials * work_s * 4)
        finally:
            stop(home)
        jobs = client.service.sweep_trials(sweep.id)
        steps = _time_steps(client.service, sweep.id)
        written = {job.id: _result_written(home, job.id) for job in jobs}
    return {
        "submitted": submitted,
        "returned": returned,
        "sweep": record,
        "trials": jobs,
        "step_s": steps,
        "result_written": written,
    }


def _result_written(home: Path, job_id: str) -> float:
    """When the runner wrote the trial's ``result.json`` (its mtime): the completion event."""
    from ephemerid import names

    return (home / "bucket" / names.run_key(job_id, names.RESULT_FILE)).stat().st_mtime_ns / 1e9


def _time_steps(service: Any, sweep_id: str, times: int = 5) -> list[float]:
    """Seconds of one step of the ended sweep (the agent stopped, nothing else running): what
    each event that steps a sweep costs at least (its study replayed from the record's journal,
    the summary written, the lease taken and let go). Read after the trials' records."""
    service.advance_sweep(sweep_id)  # Optuna imported and warm: a step as the agent takes it
    out = []
    for _ in range(times):
        began = time.perf_counter()
        service.advance_sweep(sweep_id)
        out.append(time.perf_counter() - began)
    return out


def _wait_settled(client: Any, sweep_id: str, timeout: float) -> Any:
    """The sweep's record once it and every trial are settled; only reads the store."""
    deadline = time.monotonic() + timeout
    while True:
        record = client.service.get(sweep_id)
        if record.settled:
            jobs = client.service.sweep_trials(sweep_id)
            if all(job.settled for job in jobs):
                return record
        if time.monotonic() > deadline:
            raise SystemExit(
                f"sweep {sweep_id} is still {record.state.value} after {timeout:.0f} s: see "
                f"the agent's log under {client.settings.home / 'agent'}"
            )
        time.sleep(POLL_S)


def _t(when: datetime | None) -> float:
    if when is None:
        raise SystemExit("a trial's record lacks a timestamp: did every trial run?")
    return when.timestamp()


def measure(out: dict[str, Any], parallel: int) -> dict[str, Any]:
    submitted, sweep, jobs = out["submitted"], out["sweep"], out["trials"]
    written = out["result_written"]
    requested = sorted(_t(j.compute_requested_at) for j in jobs)
    live = sorted(_t(j.live_at) for j in jobs)
    started = sorted(_t(j.started_at) for j in jobs)
    finished = sorted(_t(j.finished_at) for j in jobs)
    released = sorted(_t(j.released_at) for j in jobs)
    later = range(len(jobs) - parallel)
    runtimes = [_t(j.finished_at) - _t(j.started_at) for j in jobs]
    ideal = sum(runtimes) / parallel
    wall = _t(sweep.finished_at) - submitted
    rows = {
        "slot_idle_s": [requested[parallel + k] - released[k] for k in later],
        "code_gap_s": [started[parallel + k] - finished[k] for k in later],
        "gap_result_handled_s": [released[k] - finished[k] for k in later],
        "gap_sweep_step_s": [requested[parallel + k] - released[k] for k in later],
        "gap_runner_start_s": [started[parallel + k] - requested[parallel + k] for k in later],
        "requested_to_live_s": [_t(j.live_at) - _t(j.compute_requested_at) for j in jobs],
        "live_to_started_s": [_t(j.started_at) - _t(j.live_at) for j in jobs],
        "finished_to_released_s": [_t(j.released_at) - _t(j.finished_at) for j in jobs],
        "finished_to_result_s": [written[j.id] - _t(j.finished_at) for j in jobs],
        "result_to_released_s": [_t(j.released_at) - written[j.id] for j in jobs],
        "runtime_s": runtimes,
    }
    return {
        "sweep": sweep.id,
        "sweep_state": sweep.state.value,
        "sweep_reason": sweep.reason,
        "sweep_record_writes": sweep.version,
        "sweep_record_bytes": len(json.dumps(sweep.sweep)),
        "sweep_step_s": common.summary(out["step_s"]),
        "states": sorted({j.state.value for j in jobs}),
        "trials_run": len(jobs),
        "submit_returned_s": out["returned"] - submitted,
        "first_requested_s": requested[0] - submitted,
        "fan_out_requested_s": requested[parallel - 1] - submitted,
        "fan_out_live_s": live[parallel - 1] - submitted,
        "fan_out_started_s": started[parallel - 1] - submitted,
        "most_held_at_once": _most_held(jobs),
        "wall_s": wall,
        "ideal_s": ideal,
        "overhead_ratio": wall / ideal if ideal else 0.0,
        "summaries": {name: common.summary(values) for name, values in rows.items()},
        "p95": {name: common.percentile(values, 95) for name, values in rows.items()},
        "values": rows,
        "jobs": [
            {
                "job": j.id,
                "state": j.state.value,
                "params": dict(j.spec.params),
                "metrics": dict(j.metrics),
                **{
                    f: getattr(j, f).isoformat() if getattr(j, f) else None
                    for f in (
                        "compute_requested_at",
                        "live_at",
                        "started_at",
                        "finished_at",
                        "released_at",
                    )
                },
            }
            for j in jobs
        ],
    }


def _most_held(jobs: list[Any]) -> int:
    edges = [(_t(j.compute_requested_at), 1) for j in jobs]
    edges += [(_t(j.released_at), -1) for j in jobs]
    most = held = 0
    for _, step in sorted(edges):
        held += step
        most = max(most, held)
    return most


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    s, p95 = results["summaries"], results["p95"]
    fan_met = results["fan_out_started_s"] <= GOAL_FAN_OUT_S
    idle_met = s["slot_idle_s"]["p50"] <= GOAL_SLOT_IDLE_S
    agent = "already running" if args.warm_agent else "started by the submit"
    common.table(
        f"sweep of {args.trials} trials, max_parallel {args.parallel}, {args.work_s} s of work "
        f"each, the agent {agent}: {results['sweep_state']}, trials "
        f"{', '.join(results['states'])}, at most {results['most_held_at_once']} held at once",
        ["from the sweep's submit", "seconds"],
        [
            ["submit_sweep returned", f"{results['submit_returned_s']:.2f}"],
            ["the first trial's compute requested", f"{results['first_requested_s']:.2f}"],
            [f"trial {args.parallel}'s compute requested", f"{results['fan_out_requested_s']:.2f}"],
            [f"trial {args.parallel}'s runner live", f"{results['fan_out_live_s']:.2f}"],
            [
                f"trial {args.parallel}'s code started (goal <= {GOAL_FAN_OUT_S} s): "
                f"{common.verdict(fan_met)}",
                f"{results['fan_out_started_s']:.2f}",
            ],
            ["sweep ended (wall)", f"{results['wall_s']:.2f}"],
            [f"ideal: trials' runtimes / {args.parallel}", f"{results['ideal_s']:.2f}"],
            ["overhead: wall / ideal", f"{results['overhead_ratio']:.2f}x"],
            [
                f"one step of the sweep (p50; the sweep's record written "
                f"{results['sweep_record_writes']} times)",
                f"{results['sweep_step_s']['p50']:.3f}",
            ],
        ],
    )

    def row(label: str, key: str) -> list[str]:
        return [label, f"{s[key]['p50']:.3f}", f"{p95[key]:.3f}", f"{s[key]['max']:.3f}"]

    common.table(
        f"between trials ({args.trials - args.parallel} slot hand-overs) and per trial; slot "
        f"idle goal p50 <= {GOAL_SLOT_IDLE_S} s: {common.verdict(idle_met)}",
        ["seconds", "p50", "p95", "max"],
        [
            row("slot idle: a release -> the next trial's compute requested", "slot_idle_s"),
            row("code gap: a trial's code ended -> the next one's started", "code_gap_s"),
            row("  of it: code ended -> compute released", "gap_result_handled_s"),
            row("  of it: released -> next requested (the sweep's step)", "gap_sweep_step_s"),
            row("  of it: requested -> the next one's code started", "gap_runner_start_s"),
            row("per trial: requested -> live (provision)", "requested_to_live_s"),
            row("per trial: live -> code started (runner start)", "live_to_started_s"),
            row("per trial: code ended -> released", "finished_to_released_s"),
            row("  of it: code ended -> result.json written (runner)", "finished_to_result_s"),
            row("  of it: result.json -> released (the agent)", "result_to_released_s"),
            row("per trial: its own runtime", "runtime_s"),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=24, help="the sweep's max_trials")
    parser.add_argument("--parallel", type=int, default=4, help="max_parallel and local slots")
    parser.add_argument("--work-s", type=float, default=0.7, help="each trial's own work")
    parser.add_argument(
        "--warm-agent",
        action="store_true",
        help="start the home's agent before the submit (as after an earlier submit)",
    )
    args = parser.parse_args()
    if args.parallel < 1 or args.trials <= args.parallel:
        raise SystemExit(
            f"--trials {args.trials} --parallel {args.parallel}: give more trials than parallel "
            "(and parallel 1 or more), or there is no slot hand-over to measure"
        )
    run_ = common.Run("sweeps", vars(args))
    with tempfile.TemporaryDirectory(prefix="bench-sweeps-") as tmp:
        common.console.print(
            f"[dim]{args.trials} trials, max_parallel {args.parallel}, "
            f"{args.work_s} s of work each...[/dim]"
        )
        out = run(Path(tmp), args.trials, args.parallel, args.work_s, args.warm_agent)
        results = measure(out, args.parallel)
    results["goal_fan_out_s"] = GOAL_FAN_OUT_S
    results["goal_fan_out_met"] = results["fan_out_started_s"] <= GOAL_FAN_OUT_S
    results["goal_slot_idle_s"] = GOAL_SLOT_IDLE_S
    results["goal_slot_idle_met"] = results["summaries"]["slot_idle_s"]["p50"] <= GOAL_SLOT_IDLE_S
    report(results, args)
    run_.save(results)


if __name__ == "__main__":
    main()

"""Local cold start: from ``submit()`` to the first line of the user's code.

Three kinds of job in one run: with no environment (the runner's own Python), with a cached
environment (``environment.requirements``, built before the measured jobs), and the first build
of a small requirements file (a wheel made here, installed with ``--no-index``: no package index
is asked), each build a new identity (a comment line changes), reported on its own.

Each job runs a script whose first line takes ``time.time()``; it then writes that stamp to a
file the benchmark waits for. The job goes through the real service and the real local backend
(a runner subprocess that fetches ``job.json``, stages the code, and starts the entrypoint in a
second Python), then is completed and its compute released before the next one starts. In the
same run, between jobs, the benchmark times a bare ``python -c 'print(1)'`` (spawn to exit) and
``python -c 'import ephemerid.runner'`` with the same interpreter, for the ratio and a breakdown.

    python bench/cold_start.py              # 50 jobs of each kind, 5 first builds
    python bench/cold_start.py --jobs 20 --builds 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

GOAL_P50_S = 0.5
GOAL_ENV_OVERHEAD_S = 0.05  # a cached environment adds at most this to the p50
WARMUP = 2  # jobs run before measuring (first-run bytecode compilation, page cache)

SCRIPT = """\
import time; STARTED = time.time()  # the first line of user code
import json, os, pathlib
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
stamp = pathlib.Path(params["stamp"])
stamp.with_suffix(".tmp").write_text(repr(STARTED))
os.replace(stamp.with_suffix(".tmp"), stamp)
"""


def wait_for(check: Any, what: str, timeout: float = 60.0, poll: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)
    return value


def spawn_s(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def one_job(
    service: Any, code_dir: Path, stamp: Path, environment: dict[str, Any] | None = None
) -> dict[str, float]:
    from ephemerid import names
    from ephemerid.record import ComputeState
    from ephemerid.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "code": str(code_dir),
            "entrypoint": "job.py",
            "params": {"stamp": str(stamp)},
            "compute": {"max_runtime": 120},
            **({"environment": environment} if environment else {}),
        }
    )
    t0 = time.time()
    job = service.submit(spec).job
    t_submitted = time.time()
    result = names.run_key(job.id, names.RESULT_FILE)

    def stamped() -> str | None:
        if stamp.is_file():
            return stamp.read_text()
        if service.artifacts.stat(result):  # ended without writing the stamp: say why
            raise SystemExit(f"job {job.id} ended early: {service.complete(job.id).reason}")
        return None

    started = float(wait_for(stamped, f"job {job.id} to start its code"))
    wait_for(lambda: service.artifacts.stat(result), f"job {job.id}'s result", poll=0.01)
    done = service.complete(job.id)
    if done.compute_state is not ComputeState.RELEASED or done.state.value != "SUCCEEDED":
        raise SystemExit(f"job {job.id} ended {done.state.value}/{done.compute_state.value}")
    return {
        "cold_s": started - t0,
        "submit_s": t_submitted - t0,
        "after_submit_s": started - t_submitted,
        "setup_s": done.setup_s or 0.0,
    }


def write_requirements(code_dir: Path, build: int) -> None:
    """A small requirements file: one wheel from the code folder, no index; ``build`` makes
    each text (so each identity) new."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wheels import local_requirements, make_wheel

    make_wheel(code_dir / "wheels", "benchpkg", "1.0", "VALUE = 1\n")
    local_requirements(code_dir, f"# build {build}", "benchpkg==1.0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--builds", type=int, default=5)
    args = parser.parse_args()

    from ephemerid.app import build_service
    from ephemerid.envs.build import find_uv
    from ephemerid.settings import Settings

    run = common.Run(
        "cold_start", {"jobs": args.jobs, "builds": args.builds, "warmup_jobs": WARMUP}
    )
    jobs: list[dict[str, float]] = []
    cached: list[dict[str, float]] = []
    builds: list[dict[str, float]] = []
    env = {"requirements": "requirements.txt"}
    bare: list[float] = []
    runner_import: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        root = Path(tmp)
        code_dir = root / "code"
        code_dir.mkdir()
        (code_dir / "job.py").write_text(SCRIPT)
        (root / "stamps").mkdir()
        settings = Settings.from_env(
            {}, home=root / "home", rules_path=root / "ephemerid.yaml", grace_s=2.0
        )
        service = build_service(settings)
        stamps = root / "stamps"
        try:
            for n in range(args.builds):  # each a new identity: a first build
                write_requirements(code_dir, n)
                builds.append(one_job(service, code_dir, stamps / f"build-{n}.txt", env))
            for i in range(WARMUP + args.jobs):  # the last build's environment is cached now
                b = spawn_s("print(1)")
                r = spawn_s("import ephemerid.runner")
                j = one_job(service, code_dir, stamps / f"{i}.txt")
                c = one_job(service, code_dir, stamps / f"env-{i}.txt", env)
                if i >= WARMUP:
                    bare.append(b)
                    runner_import.append(r)
                    jobs.append(j)
                    cached.append(c)
        finally:
            service.close()

    cold = common.summary([j["cold_s"] for j in jobs])
    submit = common.summary([j["submit_s"] for j in jobs])
    after = common.summary([j["after_submit_s"] for j in jobs])
    bare_s = common.summary(bare)
    imp = common.summary(runner_import)
    ratio = cold["p50"] / bare_s["p50"]
    with_env = common.summary([j["cold_s"] for j in cached])
    env_setup = common.summary([j["setup_s"] for j in cached])
    first = common.summary([j["cold_s"] for j in builds])
    first_setup = common.summary([j["setup_s"] for j in builds])
    overhead = with_env["p50"] - cold["p50"]
    # each cached-environment job runs right after a plain one: their differences, paired,
    # drift less with the machine's load than the difference of the two medians
    paired = common.summary([c["cold_s"] - j["cold_s"] for c, j in zip(cached, jobs, strict=True)])
    env_met = overhead <= GOAL_ENV_OVERHEAD_S and with_env["p50"] <= GOAL_P50_S
    rows = [
        ["submit -> first line of user code", *_ms(cold)],
        ["  submit() returns (staged, runner spawned)", *_ms(submit)],
        ["  runner: start, fetch, stage, start user code", *_ms(after)],
        ["python -c 'print(1)' (spawn to exit)", *_ms(bare_s)],
        ["python -c 'import ephemerid.runner'", *_ms(imp)],
        ["with a cached environment: submit -> first line", *_ms(with_env)],
        ["  of which its setup (lock, find it built)", *_ms(env_setup)],
        ["  minus the plain job just before it (paired)", *_ms(paired)],
        [f"first build ({args.builds}): submit -> first line", *_ms(first)],
        ["  of which the build (setup_s)", *_ms(first_setup)],
    ]
    common.table(
        f"local cold start, {args.jobs} jobs (goal: p50 <= {GOAL_P50_S} s): "
        f"p50 {cold['p50']:.3f} s, {ratio:.1f}x a bare Python start, "
        f"{common.verdict(cold['p50'] <= GOAL_P50_S)}; a cached environment adds "
        f"{overhead * 1000:.0f} ms (goal <= {GOAL_ENV_OVERHEAD_S * 1000:.0f} ms, total <= "
        f"{GOAL_P50_S} s): {common.verdict(env_met)}",
        ["", "p50 ms", "p99 ms", "min ms", "max ms"],
        rows,
    )
    run.save(
        {
            "cold_start_s": cold,
            "submit_s": submit,
            "after_submit_s": after,
            "bare_python_s": bare_s,
            "import_runner_s": imp,
            "ratio_p50_to_bare_python": round(ratio, 2),
            "goal_p50_s": GOAL_P50_S,
            "goal_met": cold["p50"] <= GOAL_P50_S,
            "cached_env_cold_start_s": with_env,
            "cached_env_setup_s": env_setup,
            "cached_env_overhead_p50_s": round(overhead, 4),
            "cached_env_paired_difference_s": paired,
            "first_build_cold_start_s": first,
            "first_build_setup_s": first_setup,
            "installer": "uv" if find_uv() else "pip",
            "env_goal_met": env_met,
            "device": common.gpu_name() or "cpu",
        }
    )


def _ms(s: dict[str, float]) -> list[str]:
    return [f"{s[k] * 1000:.0f}" for k in ("p50", "p99", "min", "max")]


if __name__ == "__main__":
    main()

"""Billed idle per job: from ``result.json`` written to the compute given back.

The azure-vm backend runs with the real ``azure-mgmt-compute`` client against the ARM simulator
(``ephemerid.testing.arm``), with Azure's latencies scaled down by ``--scale`` (default 0.1):
a VM takes ``--provision-s`` (60 s) to create and ``--delete-s`` (45 s) to delete, and the
client polls long-running operations every 30 s, the SDK's default when ARM sends no
Retry-After. The simulated VMs are played by the tests' ``VmPlayer`` (tests/compute/vms.py): it
runs the real runner from each VM's own cloud-init once the simulator reports the VM running.

The ``result.json`` event reaches ``on_run_result``, the function ``register`` puts on a real
FunctionApp, from a watcher that polls the bucket every 50 ms and invokes the function on its own
thread per event (as the Functions host runs invocations side by side); Event Grid's own delivery
time is not simulated. The same is measured for the local backend.

Per job: result.json written (its mtime) -> DELETE accepted by ARM (202) -> the VM gone from the
simulator (what Azure stops billing) -> release confirmed in the job's record. Times that the
simulator's scale stretches are also given in Azure seconds (divided by ``--scale``).

The azure-ml backend runs in the same run with the real ``MLClient`` against the simulator's
Azure ML jobs, played by the tests' ``AmlPlayer``: result.json -> the Azure ML job terminal ->
release confirmed; then the cluster's node idles ``EPHEMERID_AML_IDLE_S`` (120 s, the infra's
setting) before it scales down, which is billed: not simulated, added as configured.

The local backend is also measured through the CLI, as a user runs it (``bench/local_agent.py``):
``--cli-jobs`` (20) jobs submitted with ``eph submit --detach``, every command returned before
any result lands, so only the home's local agent handles them; and as many ``eph submit``
following their jobs (attached), in the same run. Per job: result.json -> released.

    python bench/billed_idle.py
    python bench/billed_idle.py --jobs 10 --scale 0.05 --cli-jobs 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import local_agent

GOAL_DELETE_S = 5.0
GOAL_LOCAL_AGENT_S = 1.0  # p50, result.json -> released, detached jobs, no command running
POLL_S = 0.05  # the watcher that stands in for Event Grid
SDK_POLLING_S = 30.0  # azure-mgmt-compute's LRO polling interval without Retry-After
BACKEND_KEYS = {
    "azure-vm": ["delete_accepted_s", "vm_gone_s"],
    "azure-ml": ["aml_ended_s", "billed_idle_s"],
}
JOB_SCRIPT = """
import json, os, pathlib, time
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
time.sleep(params["seconds"])
print("trained")
"""

try:
    from ephemerid.testing.arm import ArmSimulator
except ImportError:  # the azure extra is missing: main() says what to install
    ArmSimulator = object  # type: ignore[misc,assignment]


class TimedArm(ArmSimulator):  # type: ignore[misc,valid-type]
    """The ARM simulator, noting when each VM's DELETE was accepted and when the VM is gone."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.accepted: dict[str, float] = {}  # VM name -> wall time of the first 202
        self.gone: dict[str, float] = {}  # VM name -> wall time its delete ends

    def _delete(self, key: tuple[str, str], query: dict[str, str]) -> Any:
        vm = self._vms.get(key)
        reply = super()._delete(key, query)
        if vm is not None and reply[0] == 202 and vm.name not in self.accepted:
            now = time.time()
            self.accepted[vm.name] = now
            self.gone[vm.name] = now + (vm.until - time.monotonic())
        return reply


class ResultWatcher:
    """Stands in for Event Grid: each job's result.json, once seen, goes to ``on_run_result``."""

    def __init__(self, artifacts: Any, function: Any) -> None:
        self.artifacts, self.function = artifacts, function
        self.jobs: set[str] = set()
        self.delivered: dict[str, float] = {}
        self.errors: list[str] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        from ephemerid import names
        from ephemerid.devhost.blobs import blob_stream

        while not self._stop.wait(POLL_S):
            for job_id in sorted(self.jobs - set(self.delivered)):
                stat = self.artifacts.stat(names.run_key(job_id, names.RESULT_FILE))
                if stat is None:
                    continue
                self.delivered[job_id] = time.time()
                event = blob_stream(self.artifacts, stat)
                thread = threading.Thread(target=self._invoke, args=(event,))
                thread.start()
                self._threads.append(thread)

    def _invoke(self, event: Any) -> None:
        try:
            self.function(event)
        except Exception as exc:  # shown in the results, never hidden
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for thread in self._threads:
            thread.join()


def build(root: Path, sim: Any, scale: float, jobs: int, idle_s: float) -> tuple[Any, Any]:
    """A service with the azure-vm and azure-ml backends on ``sim`` and the local backend, and
    the function."""
    import azure.functions as func

    sys.path.insert(0, str(common.ROOT / "tests"))
    from compute.aml import GROUP, WORKSPACE, aml_env
    from compute.vms import azure_env
    from ephemerid.artifacts import open_artifacts
    from ephemerid.compute.azure_ml import AzureMlCompute
    from ephemerid.compute.azure_vm import AzureVmCompute
    from ephemerid.compute.local import LocalCompute
    from ephemerid.functions import register
    from ephemerid.functions.handlers import Handlers
    from ephemerid.rules import Rules
    from ephemerid.service import Service
    from ephemerid.settings import Settings
    from ephemerid.store import open_store
    from ephemerid.testing.arm import compute_client, ml_client

    env = azure_env(root / "home", sim, EPHEMERID_PROVISION_TIMEOUT_S="600")
    ml_env = aml_env(root / "home", sim, EPHEMERID_AML_FINISH_WAIT_S="30")
    env = {**ml_env, **env, "EPHEMERID_AML_IDLE_S": str(idle_s)}
    settings = Settings.from_env(env)
    assert settings.azure_vm is not None and settings.azure_ml is not None
    subscription = settings.azure_ml.subscription_id
    artifacts = open_artifacts(settings.artifacts_url)
    client = compute_client(
        sim.endpoint, settings.azure_vm.subscription_id, polling_interval=SDK_POLLING_S * scale
    )
    backends = {
        "azure-vm": AzureVmCompute(
            client, settings.azure_vm, artifacts.root_uri, timeout_s=settings.provision_timeout_s
        ),
        "azure-ml": AzureMlCompute(
            lambda: ml_client(sim.endpoint, GROUP, WORKSPACE, subscription),
            settings.azure_ml,
            artifacts,
            timeout_s=settings.provision_timeout_s,
        ),
        "local": LocalCompute(
            settings.home / "compute", artifacts.root_uri, slots=jobs, grace_s=settings.grace_s
        ),
    }
    service = Service(open_store(settings.store_url), artifacts, backends, settings)
    handlers = Handlers(service, Rules.parse("rules: []\n", base=root))
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, lambda: handlers)
    function = next(
        f.get_user_function()
        for f in app.get_functions()
        if f.get_function_name() == "on_run_result"
    )
    return service, function


def run_jobs(
    service: Any, watcher: ResultWatcher, code: Path, backend: str, jobs: int, seconds: float
) -> list:
    """Submit ``jobs`` jobs side by side on ``backend``; wait until their compute is released."""
    from ephemerid.record import ComputeState, job_id_for
    from ephemerid.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "kind": "train",
            "code": str(code),
            "entrypoint": "job.py",
            "params": {"seconds": seconds},
            "compute": {"backend": backend, "max_runtime": 600}
            | ({} if backend == "local" else {"skus": ["Standard_NC4as_T4_v3"]}),
        }
    )
    keys = [f"bench:{backend}:{i}:{time.time_ns()}" for i in range(jobs)]
    ids = [job_id_for("train", key) for key in keys]
    watcher.jobs.update(ids)  # like Event Grid: a result is delivered whoever is waiting for it
    threads = [
        threading.Thread(target=service.submit, args=(spec,), kwargs={"key": key}) for key in keys
    ]
    for thread in threads:  # each submit blocks while its VM is created, as a function would
        thread.start()
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 600
    while True:
        records = [service.store.get(job_id) for job_id in ids]
        if all(r.compute_state is ComputeState.RELEASED for r in records):
            return records
        if time.monotonic() > deadline:
            raise SystemExit(f"jobs not released after 10 minutes: {ids}")
        time.sleep(0.1)


def measure(service: Any, sim: Any, watcher: ResultWatcher, records: list) -> list[dict]:
    from ephemerid import names

    rows = []
    for job in records:
        result = Path(service.artifacts.root) / names.run_key(job.id, names.RESULT_FILE)
        written = result.stat().st_mtime_ns / 1e9
        row = {
            "job": job.id,
            "state": job.state.value,
            "event_s": watcher.delivered[job.id] - written,
            "released_s": job.released_at.timestamp() - written,
        }
        aml = job.handle.get("aml_job")
        if aml:
            ended = sim.ml.job(aml).ended_at
            row["aml_job"] = aml
            row["aml_status"] = sim.ml.job(aml).status
            row["aml_ended_s"] = ended - written
            row["billed_idle_s"] = ended - written + job.billed_tail_s
        vm = job.handle.get("vm")
        if vm:
            row["vm"] = vm
            row["delete_accepted_s"] = sim.accepted[vm] - written
            row["vm_gone_s"] = sim.gone[vm] - written
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs per backend, side by side")
    parser.add_argument("--scale", type=float, default=0.1, help="simulated time / Azure time")
    parser.add_argument("--provision-s", type=float, default=60.0, help="Azure VM create time")
    parser.add_argument("--delete-s", type=float, default=45.0, help="Azure VM delete time")
    parser.add_argument(
        "--aml-idle-s", type=float, default=120.0, help="Azure ML cluster idle time (billed)"
    )
    parser.add_argument(
        "--cli-jobs", type=int, default=20, help="local jobs through `eph submit`, per mode"
    )
    args = parser.parse_args()
    if ArmSimulator is object:
        raise SystemExit("bench/billed_idle.py needs pip install -e '.[azure]' (make bench does)")
    run = common.Run("billed_idle", vars(args))
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp,
        TimedArm(
            provision_s=args.provision_s * args.scale, delete_s=args.delete_s * args.scale
        ) as sim,
    ):
        sys.path.insert(0, str(common.ROOT / "tests"))
        from compute.aml import AmlPlayer
        from compute.vms import VmPlayer

        root = Path(tmp)
        code = root / "code"
        code.mkdir()
        (code / "job.py").write_text(JOB_SCRIPT)
        service, function = build(root, sim, args.scale, args.jobs, args.aml_idle_s)
        watcher = ResultWatcher(service.artifacts, function)
        try:
            with VmPlayer(sim, root / "vms"), AmlPlayer(sim, root / "nodes"):
                for backend in ("azure-vm", "azure-ml", "local"):
                    common.console.print(f"[dim]{backend}: {args.jobs} jobs...[/dim]")
                    # the job outlasts the create's polling, as a real VM's boot and setup would
                    seconds = SDK_POLLING_S * args.scale + 1.0
                    records = run_jobs(service, watcher, code, backend, args.jobs, seconds)
                    results[backend] = measure(service, sim, watcher, records)
        finally:
            watcher.stop()
            service.close()
        left = [vm.name for vm in sim.inventory()]
        cli: dict[str, list[dict]] = {}
        for mode in ("detached", "attached"):
            common.console.print(
                f"[dim]local through the CLI, {mode}: {args.cli_jobs} jobs...[/dim]"
            )
            cli[mode] = local_agent.run(root, args.cli_jobs, detach=mode == "detached")
    report(results, args, left, watcher.errors)
    report_cli(cli, args)
    out = summarize(results, args, left, watcher.errors)
    out["local_cli"] = {
        mode: {
            "released_s": common.summary([r["released_s"] for r in rows]),
            "states": sorted({r["state"] for r in rows}),
        }
        for mode, rows in cli.items()
    }
    out["local_cli"]["jobs"] = cli
    detached_p50 = out["local_cli"]["detached"]["released_s"]["p50"]
    out["goal_local_agent_s"] = GOAL_LOCAL_AGENT_S
    out["goal_local_agent_met"] = detached_p50 <= GOAL_LOCAL_AGENT_S
    run.save(out)


def report_cli(cli: dict[str, list[dict]], args: argparse.Namespace) -> None:
    rows = []
    for mode, label in (
        ("detached", "eph submit --detach, no command running"),
        ("attached", "eph submit, following"),
    ):
        s = common.summary([r["released_s"] for r in cli[mode]])
        rows.append([f"local, {label}", f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}"])
    met = common.summary([r["released_s"] for r in cli["detached"]])["p50"] <= GOAL_LOCAL_AGENT_S
    common.table(
        f"local through the CLI, {args.cli_jobs} jobs per mode: result.json -> released "
        f"(goal: detached p50 <= {GOAL_LOCAL_AGENT_S} s): {common.verdict(met)}",
        ["seconds after result.json", "p50", "p99", "max"],
        rows,
    )


def summarize(results: dict, args: argparse.Namespace, left: list[str], errors: list) -> dict:
    out: dict[str, Any] = {"left_in_inventory": left, "errors": errors, "jobs": results}
    for backend, rows in results.items():
        keys = ["event_s", "released_s", *BACKEND_KEYS.get(backend, [])]
        out[backend] = {k: common.summary([r[k] for r in rows]) for k in keys}
        out[backend]["states"] = sorted({r["state"] for r in rows})
    vm = out["azure-vm"]
    accepted = vm["delete_accepted_s"]["p50"]
    # In Azure seconds: the DELETE is accepted after unscaled work, then the delete itself runs.
    out["azure_s"] = {
        "delete_accepted_p50": accepted,
        "vm_gone_p50": accepted + (vm["vm_gone_s"]["p50"] - accepted) / args.scale,
        "released_p50": accepted + (vm["released_s"]["p50"] - accepted) / args.scale,
    }
    out["billed_idle_s"] = round(out["azure_s"]["vm_gone_p50"], 2)  # read by bench/cost.py
    out["billed_idle_note"] = (
        f"{accepted:.2f} s measured from result.json to DELETE accepted, then the VM's delete "
        f"({args.delete_s:.0f} s assumed for Azure, simulated at {args.scale}x)"
    )
    ml = out["azure-ml"]
    out["azure_ml_billed_idle_s"] = ml["billed_idle_s"]["p50"]
    out["azure_ml_note"] = (
        f"{ml['aml_ended_s']['p50']:.2f} s measured from result.json to the Azure ML job "
        f"terminal (Completed), then the cluster's {args.aml_idle_s:.0f} s idle tail (configured)"
    )
    out["goal_delete_accepted_s"] = GOAL_DELETE_S
    out["goal_met"] = vm["delete_accepted_s"]["max"] <= GOAL_DELETE_S and not left
    return out


def report(results: dict, args: argparse.Namespace, left: list[str], errors: list) -> None:
    def cells(rows: list[dict], key: str) -> list[str]:
        if not rows or key not in rows[0]:
            return ["-", "-", "-"]
        s = common.summary([r[key] for r in rows])
        return [f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}"]

    table_rows = []
    labels = {
        "event_s": "result.json -> event delivered",
        "delete_accepted_s": "result.json -> DELETE accepted",
        "vm_gone_s": "result.json -> VM gone (billing ends)",
        "aml_ended_s": "result.json -> Azure ML job terminal",
        "released_s": "result.json -> release confirmed",
        "billed_idle_s": "result.json -> idle node scaled down (billing ends)",
    }
    for backend, rows in results.items():
        for key, label in labels.items():
            if key in rows[0]:
                table_rows.append([f"{backend}: {label}", *cells(rows, key)])
    vm = results["azure-vm"]
    accepted = common.summary([r["delete_accepted_s"] for r in vm])
    met = accepted["max"] <= GOAL_DELETE_S and not left
    common.table(
        f"billed idle per job, {args.jobs} jobs per backend, simulator at {args.scale}x Azure "
        f"time (goal: DELETE accepted <= {GOAL_DELETE_S} s): {common.verdict(met)}; "
        f"VMs left: {len(left)}; errors: {len(errors)}",
        ["seconds after result.json (simulated time)", "p50", "p99", "max"],
        table_rows,
    )
    summary = summarize(results, args, left, errors)["azure_s"]
    common.table(
        f"in Azure seconds (delete {args.delete_s:.0f} s, LRO polled every {SDK_POLLING_S:.0f} s)",
        ["azure-vm, p50", "seconds"],
        [
            ["result.json -> DELETE accepted", f"{summary['delete_accepted_p50']:.2f}"],
            ["result.json -> VM gone (billing ends)", f"{summary['vm_gone_p50']:.1f}"],
            ["result.json -> release confirmed", f"{summary['released_p50']:.1f}"],
        ],
    )
    ml = common.summary([r["billed_idle_s"] for r in results["azure-ml"]])
    common.table(
        f"azure-ml: billed after result.json, with the cluster's {args.aml_idle_s:.0f} s idle tail",
        ["azure-ml, p50", "seconds"],
        [["result.json -> idle node scaled down (billing ends)", f"{ml['p50']:.1f}"]],
    )


if __name__ == "__main__":
    main()

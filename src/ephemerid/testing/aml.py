"""The Azure ML part of the ARM simulator: the workspace jobs that the azure-ml backend calls.

``AmlJobs`` answers, inside ``ArmSimulator``, what ``azure-ai-ml``'s ``MLClient.jobs`` sends for a
command job whose environment is registered and which uploads no code. Read off the SDK's
source (``JobOperations``) and checked against it: each verb makes exactly one of these calls.

- ``create_or_update``: PUT ``…/workspaces/{ws}/jobs/{name}``, 201 with the job (``NotStarted``);
  the same body again answers 200 with the job as it is, another body 400 (names are unique).
- ``get``: GET ``…/jobs/{name}``, the job with ``properties.status``; 404 ``ResourceNotFound``.
- ``list``: GET ``…/jobs`` with ``listViewType`` and ``tag`` (jobs having that tag key), paged
  with ``nextLink``.
- ``begin_cancel``: POST ``…/jobs/{name}/cancel``, 202 with a ``Location`` and a
  ``Retry-After`` of ``cancel_retry_after_s`` (10 s, as Azure ML answers: at least 10) that
  answers 202 until the job is ``Canceled``, then 200.

A job walks Azure ML's documented statuses: ``NotStarted``, ``Starting``, ``Preparing`` (the
image build, ``preparing_s``), ``Queued`` (for ``queue_s`` from the PUT, longer while its cluster
has too few free nodes), ``Running`` (the test plays its nodes: ``tests/compute/aml.py``, and
reports the end with ``finish``), ``Finalizing`` (``finalizing_s``), ``Completed`` or ``Failed``.
``not_responding`` turns a running job ``NotResponding`` and back; a cancel makes it
``CancelRequested``, then ``Canceled`` after ``cancel_s`` (or at ``end_cancels``). Scripted:
workspaces and clusters, quota refusals of the PUT (Azure ML's ``JobNodeCountExceedsCoreQuota``)
and quota failures after it (``fail_for_quota``: the error in run history, ``aml_runs``), and a
caller without the role (403). Environment versions are ``aml_environments``': immutable.

Not simulated: the studio, metrics and log streaming (``jobs.stream``), code or data upload
and other assets, image builds, the cluster's scaling (``min_instances=0``, the idle
scale-down), node preemption, and mounting the ``uri_folder`` data. docs/azure-ml.md says so.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ephemerid.testing import aml_runs
from ephemerid.testing.aml_environments import AmlEnvironments
from ephemerid.testing.aml_runs import error as _error

Reply = tuple[int, Any, dict[str, str]]
TERMINAL = frozenset({"Completed", "Failed", "Canceled"})
# the statuses in which a job's nodes are allocated to it
HOLDING_NODES = frozenset({"Running", "NotResponding", "Finalizing", "CancelRequested"})
PROVIDER = "microsoft.machinelearningservices"


@dataclass
class Cluster:
    name: str
    max_nodes: int = 4
    vm_size: str = "Standard_NC4as_T4_v3"


@dataclass
class SimJob:
    """A job as the simulator holds it; ``body`` is the PUT body exactly as the client sent it."""

    group: str
    workspace: str
    name: str
    body: dict[str, Any]
    created: float
    status: str = "NotStarted"
    entered: float = 0.0  # monotonic time it entered ``status``
    outcome: str = ""  # what ``Finalizing`` ends in: Completed or Failed
    history: list[str] = field(default_factory=lambda: ["NotStarted"])  # every status, in order
    error: dict[str, Any] | None = None
    cancel_at: float | None = None
    ended_at: float | None = None  # wall time (time.time()) it became terminal

    @property
    def props(self) -> dict[str, Any]:
        return dict(self.body.get("properties") or {})

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.props.get("tags") or {})

    @property
    def nodes(self) -> int:
        return int((self.props.get("resources") or {}).get("instanceCount") or 1)

    @property
    def cluster(self) -> str:
        return str(self.props.get("computeId", "")).rstrip("/").split("/")[-1]

    @property
    def processes_per_node(self) -> int:
        distribution = self.props.get("distribution") or {}
        return int(distribution.get("processCountPerInstance") or 1)


@dataclass
class _Workspace:
    location: str
    environments: AmlEnvironments
    clusters: dict[str, Cluster] = field(default_factory=dict)


class AmlJobs:
    def __init__(
        self,
        endpoint: Callable[[], str],
        subscription: str,
        lock: threading.RLock,
        *,
        queue_s: float = 0.05,
        cancel_s: float = 0.05,
        cancel_retry_after_s: int = 10,
        preparing_s: float = 0.0,
        finalizing_s: float = 0.05,
    ) -> None:
        self._endpoint = endpoint  # the simulator's base URL, known once it listens
        self.subscription, self._lock = subscription, lock
        self.queue_s, self.cancel_s = queue_s, cancel_s
        self.cancel_retry_after_s = cancel_retry_after_s
        self.preparing_s, self.finalizing_s = preparing_s, finalizing_s
        self.created: list[SimJob] = []  # every job a PUT created, in order
        self.forbidden = False
        self._quota_refusals: int | None = 0  # None: every PUT is refused
        self._quota_failures: int | None = 0  # None: every job fails when it would run
        self._workspaces: dict[tuple[str, str], _Workspace] = {}
        self._jobs: dict[tuple[str, str, str], SimJob] = {}
        self._cancels: dict[str, SimJob] = {}

    # -- scripting -------------------------------------------------------------------------

    def workspace(
        self, group: str, name: str, *clusters: Cluster, location: str = "eastus"
    ) -> None:
        key = (group.lower(), name.lower())
        old = self._workspaces.get(key)
        environments = old.environments if old else AmlEnvironments(self.subscription, *key)
        self._workspaces[key] = _Workspace(
            location, environments, {c.name.lower(): c for c in clusters}
        )

    def environments(self, group: str, name: str) -> AmlEnvironments:
        """The workspace's environment versions (``register`` one as infra would)."""
        return self._workspaces[(group.lower(), name.lower())].environments

    def has_workspace(self, group: str, name: str) -> bool:
        return (group.lower(), name.lower()) in self._workspaces

    def refuse_quota(self, times: int | None = None) -> None:
        """Refuse the next ``times`` job submissions (every one: None) for want of vCPU quota."""
        self._quota_refusals = times

    def fail_for_quota(self, times: int | None = 1) -> None:
        """Fail the next ``times`` queued jobs (None: all) for want of quota (in run history)."""
        self._quota_failures = times

    def finish(self, name: str, ok: bool, message: str = "") -> None:
        """The job's nodes are done: ``Finalizing``, then ``Completed`` or ``Failed``."""
        job = self.job(name)
        with self._lock:
            if job is None or job.status in (*TERMINAL, "Finalizing", "CancelRequested"):
                return
            job.outcome = "Completed" if ok else "Failed"
            self._move(job, "Finalizing")
            if not ok:
                job.error = {"code": "UserError", "message": message or "a process failed"}

    def not_responding(self, name: str, lost: bool = True) -> None:
        """Azure ML stops hearing from the job's node (``NotResponding``), or hears it again."""
        job = self.job(name)
        with self._lock:
            before, after = ("Running", "NotResponding") if lost else ("NotResponding", "Running")
            if job is not None and job.status == before:
                self._move(job, after)

    def end_cancels(self) -> None:
        """Every cancel asked for is done now: those jobs are ``Canceled``."""
        with self._lock:
            for job in self._jobs.values():
                if job.status == "CancelRequested":
                    job.cancel_at = time.monotonic()
            self.tick()

    # -- reading ---------------------------------------------------------------------------

    def jobs(self) -> list[SimJob]:
        with self._lock:
            self.tick()
            return list(self._jobs.values())

    def job(self, name: str) -> SimJob | None:
        return next((j for j in self.jobs() if j.name == name), None)

    def busy_nodes(self, group: str, workspace: str, cluster: str) -> int:
        return sum(
            j.nodes
            for (g, w, _), j in self._jobs.items()
            if (g, w) == (group, workspace)
            and j.cluster.lower() == cluster
            and j.status in HOLDING_NODES
        )

    def tick(self) -> None:
        """Move each job one step on, where its time in its status is up."""
        now = time.monotonic()
        for (group, ws, _), job in self._jobs.items():
            since = now - job.entered
            if job.status == "CancelRequested" and job.cancel_at and now >= job.cancel_at:
                self._move(job, "Canceled")
            elif job.status == "NotStarted" and now >= job.created + self.queue_s / 4:
                self._move(job, "Starting")
            elif job.status == "Starting" and now >= job.created + self.queue_s / 2:
                self._move(job, "Preparing")
            elif job.status == "Preparing" and since >= self.preparing_s:
                self._move(job, "Queued")
            elif job.status == "Queued" and now >= job.created + self.queue_s:
                cluster = self._workspaces[(group, ws)].clusters[job.cluster.lower()]
                if self._quota_failures is None or self._quota_failures > 0:
                    if self._quota_failures is not None:
                        self._quota_failures -= 1
                    job.error = aml_runs.quota_error(cluster.name, cluster.vm_size, job.nodes)
                    self._move(job, "Failed")
                elif (
                    self.busy_nodes(group, ws, cluster.name.lower()) + job.nodes
                    <= cluster.max_nodes
                ):
                    self._move(job, "Running")
            elif job.status == "Finalizing" and since >= self.finalizing_s:
                self._move(job, job.outcome or "Completed")

    @staticmethod
    def _move(job: SimJob, status: str) -> None:
        job.status, job.entered = status, time.monotonic()
        job.history.append(status)
        if status in TERMINAL:
            job.ended_at = time.time()

    # -- answering -------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], raw: bytes) -> Reply:
        """One request, its token checked; ``path`` is the whole path, /subscriptions/… ."""
        parts = path.strip("/").split("/")[2:]
        lower = [p.lower() for p in parts]
        if lower[:1] == ["providers"] and len(parts) == 6 and lower[4] == "mfeoperationresults":
            return self._cancel_status(parts[5])
        not_simulated = f"{method} {path} is not simulated"
        unsupported: Reply = (400, _error("UnsupportedBySimulator", not_simulated), {})
        if lower[:1] != ["resourcegroups"] or lower[2:5] != ["providers", PROVIDER, "workspaces"]:
            return unsupported
        if len(parts) < 6:
            return unsupported
        group, ws = lower[1], lower[5]
        if (group, ws) not in self._workspaces:
            message = (
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/{parts[5]}' "
                f"under resource group '{parts[1]}' was not found."
            )
            return 404, _error("ResourceNotFound", message), {}
        if self.forbidden:
            action = "Microsoft.MachineLearningServices/workspaces/jobs/" + (
                "read" if method == "GET" else "write"
            )
            message = (
                f"The client does not have authorization to perform action '{action}' over "
                f"scope '/resourceGroups/{parts[1]}/…/workspaces/{parts[5]}'"
            )
            return 403, _error("AuthorizationFailed", message), {}
        rest = lower[6:]
        if rest == [] and method == "GET":
            location = self._workspaces[(group, ws)].location
            return 200, aml_runs.workspace(self._endpoint(), self.subscription, parts, location), {}
        if rest == ["jobs"] and method == "GET":
            return self._list(group, ws, path, query)
        if len(rest) == 2 and rest[0] == "jobs":
            key = (group, ws, parts[7])
            if method == "PUT":
                return self._put(key, raw)
            if method == "GET":
                return self._get(key)
        versions = len(rest) == 4 and rest[0] == "environments" and rest[2] == "versions"
        if versions and method in ("GET", "PUT"):
            environments = self._workspaces[(group, ws)].environments
            return environments.route(method, parts[7], parts[9], raw)
        if len(rest) == 3 and rest[0] == "jobs" and rest[2] == "cancel" and method == "POST":
            return self._cancel((group, ws, parts[7]))
        return unsupported

    def discovery(self) -> Reply:
        return aml_runs.discovery(self._endpoint())

    def history(self, method: str, path: str) -> Reply:
        return aml_runs.history(self._jobs, method, path)

    def _view(self, job: SimJob) -> dict[str, Any]:
        props = json.loads(json.dumps(job.props))
        props["status"] = job.status
        if job.error is not None:
            props.setdefault("properties", {})["azureml.error"] = job.error["message"]
        return {
            "id": f"/subscriptions/{self.subscription}/resourceGroups/{job.group}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{job.workspace}/jobs/{job.name}",
            "name": job.name,
            "type": "Microsoft.MachineLearningServices/workspaces/jobs",
            "properties": props,
        }

    def _put(self, key: tuple[str, str, str], raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
            props = body["properties"]
            kind, command = props["jobType"], props["command"]
            env, compute = props["environmentId"], props["computeId"]
        except (ValueError, KeyError, TypeError) as exc:
            return 400, _error("UserError", f"the job body is not valid: missing {exc}"), {}
        if kind != "Command" or not command or not env:
            return 400, _error("UserError", "only command jobs with an environment"), {}
        job = self._jobs.get(key)
        if job is not None:
            if job.props != props:
                message = f"Job {key[2]} already exists; only tags and description can change"
                return 400, _error("UserError", message), {}
            return 200, self._view(job), {}
        workspace = self._workspaces[key[:2]]
        if workspace.environments.has(str(env)) is False:
            message = f"Environment '{env}' was not found in workspace '{key[1]}': register it"
            return 400, _error("UserError", message, "EnvironmentNotFound"), {}
        cluster = workspace.clusters.get(str(compute).rstrip("/").split("/")[-1].lower())
        if cluster is None:
            message = f"Could not find compute target '{compute}' in workspace '{key[1]}'"
            return 400, _error("UserError", message, "ComputeNotFound"), {}
        nodes = int((props.get("resources") or {}).get("instanceCount") or 1)
        if nodes > cluster.max_nodes:
            message = (
                f"Requested {nodes} nodes but cluster '{cluster.name}' has at most "
                f"{cluster.max_nodes}"
            )
            return 400, _error("UserError", message, "NodeCountExceedsMaxNodes"), {}
        if self._quota_refusals is None or self._quota_refusals > 0:
            if self._quota_refusals is not None:
                self._quota_refusals -= 1
            message = (
                "JobNodeCountExceedsCoreQuota: The specified subscription has a "
                f"{cluster.vm_size} family vCPU quota of 0 and is less than the requested job "
                f"node count of {nodes} which maps to {4 * nodes} vCPUs. Talk to your "
                "subscription admin to increase the family quota"
            )
            return 400, _error("UserError", message, "JobNodeCountExceedsCoreQuota"), {}
        now = time.monotonic()
        job = SimJob(key[0], key[1], key[2], body, created=now, entered=now)
        self._jobs[key] = job
        self.created.append(job)
        return 201, self._view(job), {}

    def _get(self, key: tuple[str, str, str]) -> Reply:
        job = self._jobs.get(key)
        if job is None:
            return 404, _error("ResourceNotFound", f"Job {key[2]} was not found"), {}
        return 200, self._view(job), {}

    def _list(self, group: str, ws: str, path: str, query: dict[str, str]) -> Reply:
        jobs = [j for (g, w, _), j in self._jobs.items() if (g, w) == (group, ws)]
        if query.get("tag"):
            jobs = [j for j in jobs if query["tag"] in j.tags]
        skip, size = int(query.get("$skip", "0")), 20
        page: dict[str, Any] = {"value": [self._view(j) for j in jobs[skip : skip + size]]}
        if skip + size < len(jobs):
            more = "&".join(f"{k}={v}" for k, v in query.items() if k != "$skip")
            page["nextLink"] = f"{self._endpoint()}{path}?{more}&$skip={skip + size}"
        return 200, page, {}

    def _cancel(self, key: tuple[str, str, str]) -> Reply:
        job = self._jobs.get(key)
        if job is None:
            return 404, _error("ResourceNotFound", f"Job {key[2]} was not found"), {}
        if job.status in TERMINAL:
            message = f"Job {job.name} is {job.status} and cannot be canceled"
            return 400, _error("UserError", message), {}
        if job.status != "CancelRequested":
            self._move(job, "CancelRequested")
            job.cancel_at = time.monotonic() + self.cancel_s
        op = f"jc:{uuid.uuid4().hex}"
        self._cancels[op] = job
        return 202, None, self._location(job, op)

    def _location(self, job: SimJob, op: str) -> dict[str, str]:
        location = self._workspaces[(job.group, job.workspace)].location
        url = (
            f"{self._endpoint()}/subscriptions/{self.subscription}/providers/Microsoft.MachineLearningServices/"
            f"locations/{location}/mfeOperationResults/{op}?api-version=2023-04-01-preview"
        )
        return {"Location": url, "Retry-After": str(self.cancel_retry_after_s)}

    def _cancel_status(self, op: str) -> Reply:
        job = self._cancels.get(op)
        if job is None:
            return 404, _error("NotFound", f"operation {op} is unknown"), {}
        if job.status == "CancelRequested":
            return 202, None, self._location(job, op)
        return 200, None, {}

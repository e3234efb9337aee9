"""Run history in the Azure ML simulator: where a failed job's error is read.

The job resource (``jobs.get``) carries no error; Azure ML keeps a failed job's error in run
history, a data plane found through the workspace: GET ``…/workspaces/{ws}`` gives its
``discoveryUrl``, that URL the service endpoints (``api``, ``history``), and GET
``{api}/history/v1.0/…/workspaces/{ws}/runs/{name}/details`` the run's details, ``error`` a
``RootError`` (``code``, ``message``, ``innerError``). Every data plane here is the simulator.
"""

from __future__ import annotations

from typing import Any

Reply = tuple[int, Any, dict[str, str]]


def error(code: str, message: str, inner: str = "") -> dict[str, Any]:
    """An ARM error answer; ``inner``: the code of its one detail."""
    body: dict[str, Any] = {"code": code, "message": message}
    if inner:
        body["details"] = [{"code": inner, "message": message}]
    return {"error": body}


def workspace(endpoint: str, subscription: str, parts: list[str], location: str) -> dict[str, Any]:
    """The workspace resource (``parts``: its path, from resourceGroups on)."""
    group, name = parts[1], parts[5]
    return {
        "id": f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": location,
        "kind": "Default",
        "properties": {"discoveryUrl": f"{endpoint}/discovery/{location}"},
    }


def discovery(endpoint: str) -> Reply:
    """The workspace's service URLs: every data plane is this simulator."""
    return 200, {"api": endpoint, "history": endpoint}, {}


def history(jobs: dict[tuple[str, str, str], Any], method: str, path: str) -> Reply:
    """``runs/{name}/details`` (the one read the backend makes): the run's status and error."""
    parts = path.strip("/").split("/")
    lower = [p.lower() for p in parts]
    if method != "GET" or len(parts) != 13 or lower[10] != "runs" or lower[12] != "details":
        return 400, error("UnsupportedBySimulator", f"{method} {path} is not simulated"), {}
    job = jobs.get((lower[5], lower[9], parts[11]))
    if job is None:
        return 404, error("UserError", f"Run {parts[11]} was not found"), {}
    details: dict[str, Any] = {"runId": job.name, "status": job.status}
    if job.error is not None:
        details["error"] = {"error": job.error}
    return 200, details, {}


def quota_error(cluster: str, vm_size: str, nodes: int) -> dict[str, Any]:
    """A job failed for want of quota, as run history's ``RootError``; the wording is ours."""
    message = (
        f"Compute cluster '{cluster}' could not allocate {nodes} node(s): the subscription's "
        f"{vm_size} family vCPU quota is exhausted. Request a quota increase or wait for other "
        "jobs to finish"
    )
    return {"code": "UserError", "message": message, "innerError": {"code": "QuotaExceeded"}}

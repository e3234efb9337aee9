"""The runner's Azure ML environment: defined here, versioned by its content, registered once.

An Azure ML environment version cannot change: registering ``name:version`` again with other
content is refused ("already registered and cannot be changed", 409). So the version is not a
counter but a digest of what defines the environment (the image, the conda definition, the OS):
an edited conda definition is a new version, registered on the first provision that needs it,
and every later provision (in any function instance) finds it and registers nothing. An answer
that the version exists already (a provision racing this one) is read back and used when its
content is the same; other content under the digest's version is refused with what to do.

``EPHEMERID_AML_ENVIRONMENT`` names an environment of the user's own instead: it is used as is
and nothing is registered. ``EPHEMERID_AML_CONDA_FILE`` and ``EPHEMERID_AML_IMAGE`` replace the
conda definition and the image of ephemerid's own.

A job's own ``environment`` (``for_job``) is registered the same way, as ``ephemerid-job`` at the
digest of its content, so every later job with the same environment registers nothing: an
``image`` as it is (it must hold ``ephemerid[azure]`` of the service's release: the runner runs
in it), or ``pip``/``requirements`` as a conda definition on the runner's base image (this
ephemerid and the job's lines under ``pip``). The job runs in it, and its runner is told so
(``EPHEMERID_ENVIRONMENT_READY``: nothing to build). An environment that names files of the
job's code (a wheel, ``-r``, ``--find-links``) or ``inherit: true`` cannot be defined without
the code: it runs in the runner's environment, and the runner builds it on the node (setup).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ephemerid import __version__, names
from ephemerid.artifacts import ArtifactStore, get_bytes
from ephemerid.contract import Launch, LaunchEnvironment
from ephemerid.envs.identity import PATH_OPTIONS, logical_lines, this_python
from ephemerid.errors import BadInput, ComputeError

NAME = "ephemerid-runner"
IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest"
OS_TYPE = "Linux"
DESCRIPTION = "The ephemerid runner on a CUDA image (versioned by its content)"
JOB_NAME = "ephemerid-job"
_LOCAL_FILE = (".whl", ".tar.gz", ".zip", ".tgz")


def default_conda() -> dict[str, Any]:
    """The runner's conda definition: this ephemerid (so the contract matches) and PyTorch."""
    return {
        "name": NAME,
        "channels": ["conda-forge"],
        "dependencies": [
            "python=3.11",
            "pip",
            {"pip": [f"ephemerid[azure]=={__version__}", "torch==2.13.0"]},
        ],
    }


@dataclass(frozen=True)
class RunnerEnvironment:
    """What defines the runner's environment; ``version`` is the digest of it."""

    conda: dict[str, Any] | None  # None: the image as it is
    image: str = IMAGE
    name: str = NAME
    description: str = DESCRIPTION

    @classmethod
    def load(cls, conda_file: str = "", image: str = "") -> RunnerEnvironment:
        """ephemerid's own definition, or the one in ``conda_file`` (a conda YAML file)."""
        return cls(_read_conda(conda_file) if conda_file else default_conda(), image or IMAGE)

    @property
    def version(self) -> str:
        content = {"image": self.image, "conda": self.conda, "os": OS_TYPE}
        text = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def reference(self) -> str:
        return f"azureml:{self.name}:{self.version}"

    def same_as(self, registered: Any) -> bool:
        """Whether ``registered`` (the SDK's ``Environment``) has this content."""
        conda = registered.conda_file
        if isinstance(conda, str):
            conda = yaml.safe_load(conda)
        return bool(registered.image == self.image and (conda or None) == self.conda)

    def entity(self) -> Any:
        from azure.ai.ml.entities import Environment

        return Environment(
            name=self.name,
            version=self.version,
            image=self.image,
            conda_file=self.conda,
            os_type=OS_TYPE,
            description=self.description,
        )


def _read_conda(path: str) -> dict[str, Any]:
    where = f"EPHEMERID_AML_CONDA_FILE={path!r}"
    try:
        parsed = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise BadInput(f"{where} cannot be read ({exc.strerror}): name a conda YAML file") from exc
    except yaml.YAMLError as exc:
        raise BadInput(f"{where} is not YAML ({exc}): write a conda environment file") from exc
    if not isinstance(parsed, dict) or not isinstance(parsed.get("dependencies"), list):
        raise BadInput(
            f"{where} is not a conda environment: it needs a 'dependencies' list "
            "(with ephemerid[azure] under pip, so the runner is there)"
        )
    return parsed


def ensure_registered(environments: Any, runner: RunnerEnvironment, where: str) -> str:
    """Register ``runner`` in the workspace unless its version is there; its reference.

    ``environments`` is ``MLClient.environments``. A GET first: a version that is there is used
    (one registration per version, ever). A 409 on the PUT is a registration racing this one:
    read back, and used when its content is this one.
    """
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    ref = f"{runner.name}:{runner.version}"
    try:
        found = environments.get(runner.name, version=runner.version)
    except ResourceNotFoundError:
        found = None
    if found is None:
        try:
            environments.create_or_update(runner.entity())
            return runner.reference
        except ResourceExistsError:
            found = environments.get(runner.name, version=runner.version)
    if not runner.same_as(found):
        raise ComputeError(
            f"azure-ml: environment {ref} in {where} has other content than ephemerid's runner "
            "environment of that version, and a version cannot change: archive or delete that "
            "version, or set EPHEMERID_AML_ENVIRONMENT to an environment of your own"
        )
    return runner.reference


def for_job(
    artifacts: ArtifactStore, job_id: str, base: RunnerEnvironment
) -> tuple[RunnerEnvironment, str] | None:
    """The Azure ML environment of the job's own ``environment`` and its identity; None where
    it has none, or one that only the runner can build (it names the job's files, or inherits)."""
    launch = Launch.loads(get_bytes(artifacts, names.run_key(job_id, names.JOB_FILE)))
    plan = launch.environment
    if plan is None or plan.inherit:
        return None
    described = f"The job environment {plan.id} (ephemerid {__version__})"
    if plan.image:
        return RunnerEnvironment(None, plan.image, JOB_NAME, described), plan.id
    lines = _plain_lines(plan, artifacts, launch.code)
    if lines is None:
        return None
    pip = [f"ephemerid[azure]=={__version__}", *lines]
    python = plan.python or this_python()
    dependencies: list[Any] = [f"python={python}", "pip", {"pip": pip}]
    conda = {"name": JOB_NAME, "channels": ["conda-forge"], "dependencies": dependencies}
    return RunnerEnvironment(conda, base.image, JOB_NAME, described), plan.id


def _plain_lines(plan: LaunchEnvironment, artifacts: ArtifactStore, code: str) -> list[str] | None:
    """The requirement lines, when none names a file of the job's code; else None."""
    if plan.requirements:
        text = get_bytes(artifacts, f"{code.rstrip('/')}/{plan.requirements}").decode()
        lines = [line for _, line in logical_lines(text)]
    else:
        lines = list(plan.packages)
    for line in lines:
        word = line.split()[0].partition("=")[0]
        word = word[:2] if word.startswith("-") and not word.startswith("--") else word  # -rx
        if word in PATH_OPTIONS or word.startswith((".", "/")) or word.endswith(_LOCAL_FILE):
            return None
    return lines


class Registered:
    """The environment versions a backend has registered or found: one GET (or PUT) each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, str] = {}

    def reference(self, environments: Callable[[], Any], env: RunnerEnvironment, where: str) -> str:
        with self._lock:
            if env.version not in self._known:
                self._known[env.version] = ensure_registered(environments(), env, where)
            return self._known[env.version]

    def forget(self) -> None:
        with self._lock:
            self._known.clear()

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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ephemerid import __version__
from ephemerid.errors import BadInput, ComputeError

NAME = "ephemerid-runner"
IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04:latest"
OS_TYPE = "Linux"
DESCRIPTION = "The ephemerid runner on a CUDA image (versioned by its content)"


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

    conda: dict[str, Any]
    image: str = IMAGE
    name: str = NAME

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
        return bool(registered.image == self.image and conda == self.conda)

    def entity(self) -> Any:
        from azure.ai.ml.entities import Environment

        return Environment(
            name=self.name,
            version=self.version,
            image=self.image,
            conda_file=self.conda,
            os_type=OS_TYPE,
            description=DESCRIPTION,
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

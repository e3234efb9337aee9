"""The ``environment`` field of a job spec: packages to install, or a container image.

Validated where the spec enters, like the rest of ``JobSpec``: each error names the field and
what to write. ``ephemerid.envs`` turns a checked one into an identity and a build.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A container image: [registry[:port]/]path[:tag][@sha256:digest], nothing a shell could read.
IMAGE_RE = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
PYTHON_RE = re.compile(r"^3\.[0-9]{1,2}$")
MAX_PACKAGES = 256


def _requirements_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value or _CONTROL.search(value):
        raise ValueError(
            f"'{value:.80}' must be a file inside the job's code folder, written relative to it "
            "(e.g. requirements.txt)"
        )
    return value


def _package(value: str) -> str:
    if _CONTROL.search(value) or not value.strip():
        raise ValueError(f"'{value!r:.80}' is not a package: write e.g. scikit-learn==1.5.2")
    if value.lstrip().startswith("-"):
        raise ValueError(
            f"'{value:.80}' is an installer option, not a package: put options in a "
            "requirements file (environment.requirements)"
        )
    return value


class Environment(BaseModel):
    """What the job's code needs besides ephemerid: packages to install, or a container image."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requirements: Annotated[
        str | None, Field(min_length=1, max_length=256), AfterValidator(_requirements_path)
    ] = None
    pip: Annotated[
        list[Annotated[str, Field(max_length=512), AfterValidator(_package)]] | None,
        Field(min_length=1, max_length=MAX_PACKAGES),
    ] = None
    image: Annotated[str | None, Field(max_length=255)] = None
    python: str | None = None
    inherit: bool = False

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_RE.match(value):
            raise ValueError(
                f"'{value!r:.80}' is not a container image name: write registry/name:tag or "
                "registry/name@sha256:<digest>, e.g. myregistry.azurecr.io/train:1.4 (lowercase "
                "name, no spaces or shell characters)"
            )
        return value

    @field_validator("python", mode="before")
    @classmethod
    def _python(cls, value: Any) -> Any:
        if isinstance(value, float):  # python: 3.11 unquoted in YAML reads as a number
            raise ValueError(f'write the version in quotes, e.g. python: "{value}"')
        if value is not None and not (isinstance(value, str) and PYTHON_RE.match(value)):
            raise ValueError(f"'{value!s:.40}' is not a Python version: write e.g. \"3.11\"")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Environment:
        packages = [n for n in ("requirements", "pip") if getattr(self, n) is not None]
        if self.image is not None and packages:
            raise ValueError(
                f"environment.image and environment.{packages[0]} exclude each other: an image "
                "brings its own packages; install them in the image, or drop image"
            )
        if len(packages) == 2:
            raise ValueError(
                "environment.requirements and environment.pip exclude each other: list the "
                "packages in the requirements file, or drop requirements"
            )
        if self.image is not None and (self.python is not None or self.inherit):
            raise ValueError(
                "environment.image takes no python or inherit: the image brings its own Python"
            )
        if self.image is None and not packages:
            raise ValueError(
                "environment needs one of requirements (a file in the code folder), pip (a "
                "list of packages) or image; remove environment to run with the runner's own"
            )
        return self

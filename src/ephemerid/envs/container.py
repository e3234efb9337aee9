"""Run a job's code inside its ``environment.image`` with docker, as a program argument list.

The image name was checked against a strict pattern (``envs.spec.IMAGE_RE``) and every value
travels as its own argument, never through a shell. The job's work folder and this ephemerid
package are mounted at the same paths, so the environment contract (``EPHEMERID_*`` paths,
``HOME``, ``TMPDIR``) holds inside; variables pass by name (``-e NAME``), their values taken
from the docker client's own environment, so none shows in a process list.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from ephemerid.envs.build import BuildFailed

# what the image keeps of its own, not the runner's
_IMAGE_OWN = frozenset({"PATH", "LD_LIBRARY_PATH"})


def docker_command(
    image: str,
    *,
    name: str,
    work: Path,
    cwd: Path,
    command: list[str],
    env: Mapping[str, str],
    gpu: str = "",
    package: Path | None = None,
    user: str = "",
    network: str = "",
    config: Path | None = None,
) -> list[str]:
    """``docker run`` for ``command`` in ``image``: the user's code as ``user`` (``uid:gid``;
    default the runner's own). ``gpu``: a device number, or ``all``; ``network``: ``host`` on a
    VM, so the firewall rule for the job's user holds inside; ``config``: the docker client's
    own folder (its registry login), never the job's home."""
    argv = ["docker", *(["--config", str(config)] if config else []), "run", "--rm", "--init"]
    argv += ["--name", name, "--user", user or f"{os.getuid()}:{os.getgid()}"]
    if config:  # pulled already, with the VM's identity: run never pulls on its own
        argv += ["--pull", "never"]
    if network:
        argv += ["--network", network]
    argv += ["--volume", f"{work}:{work}", "--workdir", str(cwd)]
    if package is not None:
        argv += ["--volume", f"{package}:{package}:ro"]
    if gpu:
        argv += ["--gpus", "all" if gpu == "all" else f"device={gpu}"]
    for variable in sorted(env):
        if variable not in _IMAGE_OWN:
            argv += ["--env", variable]
    return [*argv, image, *command]


def in_container(
    image: str, name: str, work: Path, cwd: Path, args: list[str], env: Mapping[str, str]
) -> list[str]:
    """The command that runs ``python args...`` in ``image`` here; BuildFailed with no docker."""
    if shutil.which("docker") is None:
        raise BuildFailed(
            f"environment.image: this compute has no docker to run {image}: install docker "
            "here, or use environment.requirements"
        )
    return docker_command(
        image,
        name=name,
        work=work,
        cwd=cwd,
        command=["python", *args],
        env=env,
        gpu=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        package=Path(__file__).resolve().parents[1],
    )

"""The runner's setup step: the job's environment built, found, pulled, or given by the compute.

Before the user's code starts, the runner (``ephemerid.runner``) asks ``JobSetup.prepare``:

- no ``environment``: the runner's own Python runs the code;
- an environment the compute already runs in (Azure ML registered it by its identity and runs
  the job in it, saying so with ``EPHEMERID_ENVIRONMENT_READY=<id>``): nothing to build, the
  runner's own Python is the environment's;
- ``requirements``/``pip``: built under ``envs_root`` (or found built), ``envs.build``;
- ``image``: run with docker (``envs.container``); on a VM told its registry
  (``EPHEMERID_VM_REGISTRY``), pulled first with the VM's identity (``envs.registry``), then run
  as the job's user on the host's network with all the VM's GPUs.

The time each takes is the job's setup (``setup_s``), never its runtime.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ephemerid.contract import Launch, Result
from ephemerid.envs.build import Environments, Ready, package_path
from ephemerid.envs.container import docker_command, in_container
from ephemerid.envs.registry import Registries

ENV_READY = "EPHEMERID_ENVIRONMENT_READY"  # the compute runs the job in this environment already
GPU_DEVICE = Path("/dev/nvidiactl")  # a VM with GPUs (and their driver) has it


class JobSetup:
    """The job's environment, as one runner prepares and uses it; ``close()`` when it ends."""

    def __init__(
        self,
        work: Path,
        job_id: str,
        rank: int,
        say: Callable[[str], None],
        write: Callable[[bytes], None],
        envs_root: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.work, self.job_id, self.rank = work, job_id, rank
        self.say, self.write = say, write
        self.envs_root = envs_root or work / "envs"
        environ = os.environ if environ is None else environ
        self.given = environ.get(ENV_READY, "")
        self.registries = Registries.from_env(environ)
        self.ready: Ready | None = None
        self.docker_config: Path | None = None  # the VM's login, kept from the job's home
        self.in_container = False  # the docker client runs as the runner; the code, as the user

    def prepare(
        self,
        launch: Launch,
        env: dict[str, str],
        result: Result,
        user: pwd.struct_passwd | None = None,
    ) -> None:
        """Build, find or pull the job's environment: its time is the job's setup. ``user``:
        the job's OS user (azure-vm), who runs the installer too."""
        plan = launch.environment
        if plan is None:
            return
        if plan.id == self.given:
            self.say(f"environment {plan.id} is this compute's own: nothing to build")
            result.setup_s = 0.0
            return
        if plan.image:
            self.in_container = True
            if self.registries is not None:
                self._pull(plan.image, result)
            return
        code = self.work / "code"
        root = self.envs_root
        built = Environments(root, user=user)
        self.ready = ready = built.prepare(plan, code, self.work, self.write)
        how = "built" if ready.built else "cached"
        self.say(f"environment {plan.id} ({how}) ready in {ready.seconds:.2f}s")
        result.setup_s = ready.seconds
        paths = [env.get("PYTHONPATH", ""), str(package_path(self.work))]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)

    def _pull(self, image: str, result: Result) -> None:
        assert self.registries is not None
        started = time.monotonic()
        self.docker_config = Path(tempfile.mkdtemp(prefix="ephemerid-docker-"))
        self.registries.pull(image, self.docker_config, {}, self.write)
        result.setup_s = time.monotonic() - started
        self.say(f"image {image} pulled in {result.setup_s:.2f}s")

    def command(
        self, launch: Launch, entry: Path, env: dict[str, str], user: pwd.struct_passwd | None
    ) -> list[str]:
        """The user's code: in its environment's Python, its image, or the runner's own."""
        python = str(self.ready.python) if self.ready else sys.executable
        command = [python, "-u", str(entry), *launch.args]
        image = launch.environment.image if launch.environment else ""
        if not image or not self.in_container:
            return command
        env["PYTHONPATH"] = str(package_path(self.work))
        name = f"ephemerid-{self.job_id}-{self.rank}"
        if self.docker_config is None:  # local compute: the slot's GPU, the runner's user
            return in_container(image, name, self.work, entry.parent, command[1:], env)
        return docker_command(
            image,
            name=name,
            work=self.work,
            cwd=entry.parent,
            command=["python", *command[1:]],
            env=env,
            gpu="all" if GPU_DEVICE.exists() else "",
            package=Path(__file__).resolve().parents[1],
            user=f"{user.pw_uid}:{user.pw_gid}" if user else "",
            network="host" if user else "",  # the firewall rule for the user's uid holds inside
            config=self.docker_config,
        )

    def close(self) -> None:
        if self.ready is not None:
            self.ready.close()
        if self.docker_config is not None:
            shutil.rmtree(self.docker_config, ignore_errors=True)

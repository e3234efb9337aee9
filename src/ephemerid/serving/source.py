"""Where a version's worker comes from: its files and its code, fetched from the bucket.

The model's files are ``models/<name>/<version>/files/``; its code is the snapshot its training
job ran with (``runs/_code/<sha>/``, named by that job's ``job.json``), unless the service is
given a code folder. The entrypoint (``predict.py`` by default) must define ``load`` and
``predict``: the batch harness's pair. A training job that ran in a built environment
(``environment.pip`` or ``requirements``) has it built here too (``envs.build``); an image
environment runs only as the Azure deployment's image: here the service's own Python runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ephemerid import names
from ephemerid.artifacts import ArtifactStore, download, get_bytes
from ephemerid.contract import Launch
from ephemerid.errors import BadInput, EphemeridError
from ephemerid.models import ModelVersion
from ephemerid.serving.process import Loadable, LoadFailed


class Sources:
    def __init__(
        self,
        artifacts: ArtifactStore,
        root: Path,
        code: Path | None,
        entrypoint: str,
        envs: Path | None = None,
    ) -> None:
        self.artifacts, self.root = artifacts, root
        self.envs = envs or root.parent / "envs"  # the local jobs' own: <home>/envs
        self.code = code.resolve() if code is not None else None
        self.entrypoint = entrypoint

    def loadable(self, version: ModelVersion) -> Loadable:
        """The version fetched into ``root``; LoadFailed saying what is missing."""
        here = self.root / version.name / str(version.version)
        model_dir = here / "model"
        if not (here / ".model-complete").is_file():  # a download cut short is made again
            download(self.artifacts, version.files, model_dir)
            (here / ".model-complete").touch()
        launch = self._launch(version)
        code = self.code or self._code(launch, here / "code")
        entry = code / self.entrypoint
        if not entry.is_file():
            raise LoadFailed(
                f"{version.ref}: its code has no {self.entrypoint} (in {code}): give the folder "
                "defining load() and predict() with --code, or the file with --entrypoint"
            )
        python = self._python(launch, code, here) if self.code is None else sys.executable
        return Loadable(version, entry, model_dir, here / "scratch", python)

    def _launch(self, version: ModelVersion) -> Launch | None:
        key = names.run_key(version.job_id, names.JOB_FILE)
        if self.artifacts.stat(key) is None:
            return None
        return Launch.loads(get_bytes(self.artifacts, key), key)

    def _code(self, launch: Launch | None, folder: Path) -> Path:
        if launch is None:
            raise LoadFailed(
                "the version's training job left no job.json to find its code: give --code DIR"
            )
        if not (folder / ".complete").is_file():
            download(self.artifacts, launch.code, folder)
            (folder / ".complete").touch()
        return folder

    def _python(self, launch: Launch | None, code: Path, here: Path) -> str:
        plan = launch.environment if launch is not None else None
        if plan is None or plan.image:
            return sys.executable
        from ephemerid.envs.build import Environments

        try:
            ready = Environments(self.envs).prepare(plan, code, here / "build", _to_stderr)
        except EphemeridError as exc:
            raise LoadFailed(f"the model's environment could not be built: {exc}") from exc
        return str(ready.python)


def check_entry(code: Path | None, entrypoint: str) -> None:
    """BadInput at start when a given code folder lacks the entrypoint."""
    if code is not None and not (code / entrypoint).is_file():
        raise BadInput(f"--code {code} has no {entrypoint}: give the file with --entrypoint")


def _to_stderr(data: bytes) -> None:
    sys.stderr.buffer.write(data)
    sys.stderr.flush()

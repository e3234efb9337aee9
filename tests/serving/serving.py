"""A registry of small models of our own, and a prediction service over it on loopback.

Each version's ``model.json`` holds its ``scale``; its ``predict`` answers ``y = x * scale``
with the caller's ``id`` carried through, so a test knows which version answered which row.
A version published with ``fail=True`` raises in ``load``.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from ephemerid.app import build_service
from ephemerid.artifacts import ArtifactStore, open_artifacts, put_bytes
from ephemerid.models import ModelRegistry
from ephemerid.serving.server import PredictionService, Running
from ephemerid.serving.settings import ServingSettings
from ephemerid.settings import Settings

KEY = "alice-key-0123456789"
OTHER_KEY = "bob-key-0123456789"
KEYS = f"alice={KEY},bob={OTHER_KEY}"
NAME = "scaler"
PREDICT = textwrap.dedent(
    '''
    """y = x * scale, the caller's id carried through."""
    import json
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.compute as pc

    INPUT_SCHEMA = {"id": "int64", "x": "double"}


    def load(model_dir):
        meta = json.loads((Path(model_dir) / "model.json").read_text())
        if meta.get("fail"):
            raise RuntimeError("this version is broken on purpose")
        return meta


    def predict(model, batch):
        if pc.any(pc.equal(batch["x"], -1.0)).as_py():
            raise ValueError("x = -1 is refused")
        return {"id": batch["id"], "y": pc.multiply(batch["x"], float(model["scale"]))}
    '''
)


class Registry:
    """A home whose bucket holds versions of ``scaler``, published as training jobs leave them."""

    def __init__(self, root: Path) -> None:
        self.settings = Settings.from_env({}, home=root / "home")
        build_service(self.settings).close()  # a home, as the jobs that register models leave it
        self.artifacts: ArtifactStore = open_artifacts(self.settings.artifacts_url)
        self.models = ModelRegistry(self.artifacts)
        self.code = root / "code"
        self.code.mkdir(parents=True, exist_ok=True)
        (self.code / "predict.py").write_text(PREDICT)
        self._jobs = 0

    def publish(self, scale: float, *, fail: bool = False, alias: str | None = None) -> int:
        self._jobs += 1
        job = f"train-{self._jobs}"
        meta = {"scale": scale, "fail": fail}
        put_bytes(self.artifacts, f"runs/{job}/outputs/model/model.json", json.dumps(meta).encode())
        version = self.models.register(NAME, f"runs/{job}/outputs/model", job_id=job, metrics={})
        if alias:
            self.models.promote(NAME, version.version, alias)
        return version.version

    def serving(self, **overrides: Any) -> ServingSettings:
        values: dict[str, Any] = {
            "model": f"{NAME}@production",
            "keys": KEYS,
            "port": 0,
            "code": self.code,
            "poll_s": 0.2,
            **overrides,
        }
        return ServingSettings.from_env({}, **values)

    @contextmanager
    def serve(self, **overrides: Any) -> Iterator[Client]:
        service = PredictionService(self.serving(**overrides), self.settings)
        with Running(service) as run, Client(run) as client:
            yield client


class Client:
    """httpx on the running service, with the key given unless told otherwise."""

    def __init__(self, run: Running, key: str = KEY) -> None:
        self.run, self.url, self.key = run, run.url, key
        self.http = httpx.Client(base_url=run.url, timeout=60.0)

    @property
    def service(self) -> PredictionService:
        return self.run.service

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.http.close()

    def predict(
        self, rows: list[dict[str, Any]], *, key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"x-ephemerid-key": self.key if key is None else key, **kwargs.pop("headers", {})}
        return self.http.post(f"/v1/models/{NAME}:predict", json={"rows": rows}, headers=headers)

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        return self.http.get(path, headers={"x-ephemerid-key": self.key if key is None else key})


def rows(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i, "x": float(i)} for i in ids]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus text; 0 if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head == f"{name}{{{want}}}" or (not labels and head == name):
            return float(value)
    return 0.0

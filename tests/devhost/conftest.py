"""Dev hosts over the repository's own function_app.py, each with its own home and project.

Every host serves HTTP on a free port and reads a fake clock that stands still unless a test
moves it, so no timer fires behind a test's back. A host is closed, and every job it started
cancelled and its compute given back, when the test ends.
"""

from __future__ import annotations

import json
import os
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ephemerid.devhost import DevHost

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "function_app.py"

RULES = """
rules:
  - name: train-on-upload
    blob: incoming/train/{name}.csv
    job:
      kind: train
      code: ./code
      entrypoint: job.py
      inputs: {data: "{uri}"}
  - name: hourly
    schedule: "0 0 * * * *"
    job: {kind: train, code: ./code, entrypoint: job.py}
"""

JOB = """
import os
print("trained on", sorted(os.listdir(os.environ["EPHEMERID_INPUT_DIR"])), flush=True)
"""


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """ephemerid.yaml and its code folder: a plain-Python job that prints its inputs."""
    root = tmp_path / "project"
    (root / "code").mkdir(parents=True)
    (root / "code" / "job.py").write_text(textwrap.dedent(JOB).lstrip())
    (root / "ephemerid.yaml").write_text(RULES)
    return root


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, 10, 0, 30, tzinfo=UTC))


MakeHost = Callable[..., DevHost]


@pytest.fixture
def make_host(tmp_path: Path, project: Path, clock: FakeClock) -> Iterator[MakeHost]:
    """Start a dev host: ``make_host(app=..., home=..., settings={...}, **DevHost options)``."""
    hosts: list[DevHost] = []
    # none of the caller's EPHEMERID_* settings leak in: each test says what it runs on
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("EPHEMERID_")}

    def make(
        app: Any = APP, home: Path | None = None, settings: dict[str, str] | None = None, **kw: Any
    ) -> DevHost:
        values = {
            **clean,
            "EPHEMERID_RULES": str(project / "ephemerid.yaml"),
            "EPHEMERID_HEARTBEAT_S": "0.5",
            "EPHEMERID_GRACE_S": "2",
            **(settings or {}),
        }
        options = {"port": 0, "clock": clock, "interval": 0.05, **kw}
        host = DevHost(app, home=home or tmp_path / "home", settings=values, **options)
        host.start()
        hosts.append(host)
        return host

    yield make
    for host in reversed(hosts):
        if not host.running:  # the test closed it, or it never started
            continue
        try:
            _leave_nothing_running(host)
        finally:
            host.close()


def _leave_nothing_running(host: DevHost) -> None:
    service = host.service
    for job in service.store.list():
        service.release(job) if job.state.terminal else service.cancel(job.id, "test ended")
    for backend in service.backends.values():
        for handle in backend.list_owned():
            backend.teardown(handle)


class Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


Call = Callable[..., Response]


@pytest.fixture
def call() -> Call:
    """``call(host, method, path, body=b"", key=host.key, headers={})`` over real HTTP (urllib)."""

    def send(
        host: DevHost,
        method: str,
        path: str,
        body: bytes | None = None,
        key: str | None = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        sent = dict(headers or {})
        if key is not None:
            sent["x-functions-key"] = key or host.key
        request = urllib.request.Request(host.url + path, data=body, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return Response(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as error:
            try:
                return Response(error.code, error.headers, error.read())
            finally:
                error.close()

    return send

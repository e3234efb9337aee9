"""Shared fixtures: a fresh local ephemerid (bucket folder, SQLite, local compute) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ephemerid.app import build_service
from ephemerid.service import Service
from ephemerid.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {}, home=tmp_path / "home", rules_path=tmp_path / "ephemerid.yaml",
        heartbeat_s=0.5, grace_s=2.0,
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    svc = build_service(settings)
    yield svc
    for job in svc.store.list():  # never leave a runner behind, whatever the test did
        svc.release(job) if job.state.terminal else svc.cancel(job.id, "test ended")
    for backend in svc.backends.values():
        for handle in backend.list_owned():
            backend.teardown(handle)
    svc.store.close()


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """A folder for a test's own entrypoint scripts."""
    path = tmp_path / "code"
    path.mkdir()
    return path

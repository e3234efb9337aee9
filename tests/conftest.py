"""Shared fixtures: a fresh local ephemerid (bucket folder, SQLite, local compute) per test."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from drive import cleaned_up
from ephemerid.app import build_service
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.testing import azurite

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# the agents that `eph submit` starts in the tests' homes leave soon after their jobs
os.environ.setdefault("EPHEMERID_AGENT_IDLE_S", "5")
# A suite started from a background job (`make test &` in a script) inherits SIGINT ignored, and
# every `eph` it starts would too: the tests that press Ctrl-C need it handled, as in a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {},
        home=tmp_path / "home",
        rules_path=tmp_path / "ephemerid.yaml",
        heartbeat_s=0.5,
        grace_s=2.0,
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    with cleaned_up(build_service(settings)) as svc:  # never leave a runner behind
        yield svc


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """A folder for a test's own entrypoint scripts."""
    path = tmp_path / "code"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def azurite_connection() -> Iterator[str]:
    """Azurite's connection string: from `make test`, or an Azurite this session starts.

    Never skipped: a test that needs Azurite fails when it cannot be had. Each pytest-xdist
    worker starts its own: some tests empty the whole emulator, which another worker's tests use.
    """
    if os.environ.get(azurite.ENV) and not os.environ.get("PYTEST_XDIST_WORKER"):
        yield os.environ[azurite.ENV]
        return
    binary = azurite.find_binary(Path(__file__).parent)
    if binary is None:
        pytest.fail("Azurite is not installed: run `make test` (or `npm ci` first)")
    with azurite.running(binary) as emulator:
        yield emulator.connection_string

"""Sweeps on the local backend with real training scripts, driven as the reaper drives them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drive import cleaned_up, write_script
from ephemerid.app import build_service
from ephemerid.service import Service
from ephemerid.settings import Settings
from sweeping import TRAIN


@pytest.fixture
def train_code(code_dir: Path) -> Path:
    write_script(code_dir, TRAIN, "train.py")
    return code_dir


@pytest.fixture
def sweeps(settings: Settings) -> Iterator[Service]:
    """A service with room for four trials at once on this machine."""
    with cleaned_up(build_service(settings.model_copy(update={"local_slots": 4}))) as service:
        yield service

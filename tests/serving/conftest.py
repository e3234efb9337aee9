"""A registry of ``scaler`` versions per test (tests/serving/serving.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.serving import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path)

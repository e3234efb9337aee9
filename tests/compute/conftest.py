"""Fixtures shared by the tests of the compute backends."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture
def connection_resets() -> Iterator[None]:
    """For tests whose simulator resets connections: collect their sockets before the next test.

    A reset while http.client reads the status line leaves the socket in a reference cycle
    (response, traceback) that only the garbage collector closes, with a ResourceWarning. That is
    the standard library's doing, not ours, so it is collected here, inside the test that caused
    it; the test is marked to ignore exactly that warning.
    """
    yield
    gc.collect()

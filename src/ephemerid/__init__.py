"""ephemerid: event-driven, ephemeral GPU compute for ML jobs.

``import ephemerid`` needs no Azure package; cloud adapters load their SDKs when used, and the
Python API (``ephemerid.Client``) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ephemerid import track
from ephemerid.errors import EphemeridError

__version__ = "0.1.0"
__all__ = ["Client", "EphemeridError", "Job", "__version__", "track"]

if TYPE_CHECKING:
    from ephemerid.client import Client, Job


def __getattr__(name: str) -> Any:
    """``Client`` and ``Job`` load on first use, so ``import ephemerid`` stays light."""
    if name in ("Client", "Job"):
        from ephemerid import client

        return getattr(client, name)
    raise AttributeError(f"module 'ephemerid' has no attribute {name!r}")

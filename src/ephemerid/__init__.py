"""ephemerid: event-driven, ephemeral GPU compute for ML jobs.

``import ephemerid`` needs no Azure package; cloud adapters load their SDKs when used.
"""

from __future__ import annotations

from ephemerid import track
from ephemerid.errors import EphemeridError

__version__ = "0.1.0"
__all__ = ["EphemeridError", "__version__", "track"]

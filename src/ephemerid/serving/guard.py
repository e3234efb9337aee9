"""Who may call, and how fast: the service's keys (constant-time compare) and a token bucket
per key.

Keys are named, as the function app's are: ``EPHEMERID_SERVING_KEYS`` (``name=key`` pairs) and a
host.json-style keys file (``functionKeys`` by name, and the ``masterKey``, named ``admin``; the
dev host's ``devhost-keys.json`` is one). A request gives its key in ``x-ephemerid-key``,
``x-functions-key`` or ``Authorization: Bearer``. Each key has its own bucket of ``burst``
tokens, refilled at ``rate_per_s``: a request that finds it empty is told when to come back.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ephemerid.errors import BadInput

KEY_HEADERS = ("x-ephemerid-key", "x-functions-key")


class Keys:
    def __init__(self, named: Mapping[str, str]) -> None:
        self._named = {name: key.encode() for name, key in named.items() if key}

    @classmethod
    def of(cls, named: Mapping[str, str], keys_file: Path | None) -> Keys:
        """The settings' keys and the file's; BadInput when there are none at all."""
        found = dict(named)
        if keys_file is not None:
            found.update(_read_keys_file(keys_file))
        keys = cls(found)
        if not keys._named:
            raise BadInput(
                "the prediction service has no key to take: set EPHEMERID_SERVING_KEYS "
                "(name=key pairs) or EPHEMERID_SERVING_KEYS_FILE (a host.json-style keys file)"
            )
        return keys

    def name_of(self, given: str) -> str | None:
        """The name of the key ``given``; every key is compared, in constant time each."""
        found = None
        for name, key in self._named.items():
            if hmac.compare_digest(given.encode(), key):
                found = name
        return found

    @property
    def names(self) -> list[str]:
        return sorted(self._named)


def _read_keys_file(path: Path) -> dict[str, str]:
    """A host.json-style file's named keys, and its master key as ``admin`` (as the function
    app's ``KeyRing`` reads it, without the Functions package)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read the keys file {path}: {exc}") from None
    data = data if isinstance(data, dict) else {}
    named = data.get("functionKeys")
    found = {str(k): v for k, v in (named or {}).items() if isinstance(v, str) and v}
    if isinstance(data.get("masterKey"), str) and data["masterKey"]:
        found["admin"] = data["masterKey"]
    return found


def given_key(headers: Mapping[str, str]) -> str:
    for header in KEY_HEADERS:
        if value := headers.get(header):
            return value
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class RateLimits:
    """A token bucket per key name; ``take`` returns 0 when a request may go, else the seconds
    until a token is back (the answer's ``Retry-After``)."""

    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when)

    def take(self, name: str) -> float:
        now = self.clock()
        tokens, when = self._buckets.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))

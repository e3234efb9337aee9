"""Settings, read from ``EPHEMERID_*`` environment variables in one place.

Locally everything lives under ``EPHEMERID_HOME`` (default ``./.ephemerid``): the bucket folder,
the SQLite job store and the local compute's scratch space.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ephemerid.errors import BadInput

PREFIX = "EPHEMERID_"


@dataclass(frozen=True)
class Settings:
    home: Path
    store_url: str
    artifacts_url: str
    rules_path: Path
    backend: str = "local"
    local_slots: int | None = None
    heartbeat_s: float = 5.0
    heartbeat_timeout_s: float = 120.0
    provision_timeout_s: float = 600.0
    grace_s: float = 10.0
    log_limit_bytes: int = 10 * 1024 * 1024
    code_limit_bytes: int = 50 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        home = Path(overrides.pop("home", None) or env.get(f"{PREFIX}HOME", ".ephemerid"))
        home = home.resolve()
        values: dict[str, Any] = {
            "home": home,
            "store_url": env.get(f"{PREFIX}STORE", f"sqlite://{home / 'jobs.db'}"),
            "artifacts_url": env.get(f"{PREFIX}ARTIFACTS", f"file://{home / 'bucket'}"),
            "rules_path": Path(env.get(f"{PREFIX}RULES", "ephemerid.yaml")),
            "backend": env.get(f"{PREFIX}BACKEND", "local"),
        }
        numbers = {
            "local_slots": int,
            "heartbeat_s": float,
            "heartbeat_timeout_s": float,
            "provision_timeout_s": float,
            "grace_s": float,
            "log_limit_bytes": int,
            "code_limit_bytes": int,
        }
        for name, kind in numbers.items():
            raw = env.get(PREFIX + name.upper())
            if raw:
                try:
                    values[name] = kind(raw)
                except ValueError as exc:
                    raise BadInput(
                        f"setting {PREFIX}{name.upper()}='{raw}' is not a {kind.__name__}"
                    ) from exc
        return replace(cls(**values), **{k: v for k, v in overrides.items() if v is not None})

"""The dev host's function key: one key for HTTP functions and the blob webhook alike.

In Azure, ``authLevel: function`` needs a function key and the blob extension's webhook needs
the ``blobs_extension`` system key. Here one key serves both: ``EPHEMERID_DEV_FUNCTION_KEY`` if
set, else the one kept in ``<home>/devhost-keys.json`` (mode 0600), else a new random one.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path

KEYS_FILE = "devhost-keys.json"
KEY_ENV = "EPHEMERID_DEV_FUNCTION_KEY"
KEY_HEADER = "x-functions-key"
KEY_PARAM = "code"


def load_or_create(home: Path, env: dict[str, str] | None = None) -> str:
    """The dev key, stored in ``home/devhost-keys.json`` readable by this user only."""
    env = dict(os.environ) if env is None else env
    path = home / KEYS_FILE
    key = env.get(KEY_ENV) or _stored(path) or secrets.token_urlsafe(32)
    _store(path, key)
    return key


def matches(given: str | None, key: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), key.encode())


def _stored(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    key = data.get("functionKeys", {}).get("default") if isinstance(data, dict) else None
    return key if isinstance(key, str) and key else None


def _store(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"functionKeys": {"default": key}, "systemKeys": {"blobs_extension": key}}
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.chmod(temp, 0o600)  # whatever the umask or an older file said
    os.replace(temp, path)

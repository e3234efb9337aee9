"""The dev host's keys: named function keys and a master key, in ``<home>/devhost-keys.json``.

In Azure, ``authLevel: function`` needs a function key (or the master key) and the blob
extension's webhook needs the ``blobs_extension`` system key. Here the ``default`` function key
also serves the webhook: ``EPHEMERID_DEV_FUNCTION_KEY`` if set, else the one kept in the file
(mode 0600), else a new random one. More named keys (``"functionKeys": {"alice": ...}``) may be
added to the file: each is a caller of its own, ``key:<name>``, who sees only its own jobs; the
``masterKey`` (made on first start) is the admin, who sees every job.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path

from ephemerid.functions.callers import KeyRing

KEYS_FILE = "devhost-keys.json"
KEY_ENV = "EPHEMERID_DEV_FUNCTION_KEY"
KEY_HEADER = "x-functions-key"
KEY_PARAM = "code"


def load_or_create(home: Path, env: dict[str, str] | None = None) -> str:
    """The dev key, stored in ``home/devhost-keys.json`` readable by this user only."""
    env = dict(os.environ) if env is None else env
    path = home / KEYS_FILE
    stored = KeyRing.read(path)
    key = env.get(KEY_ENV) or stored.function_keys.get("default") or secrets.token_urlsafe(32)
    master = stored.master or secrets.token_urlsafe(32)
    _store(path, {**stored.function_keys, "default": key}, master)
    return key


def ring(home: Path) -> KeyRing:
    """Every key the dev host takes, by name (read again on each start)."""
    return KeyRing.read(home / KEYS_FILE)


def matches(given: str | None, key: str) -> bool:
    return bool(given) and hmac.compare_digest(str(given).encode(), key.encode())


def _store(path: Path, function_keys: dict[str, str], master: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "masterKey": master,
        "functionKeys": function_keys,
        "systemKeys": {"blobs_extension": function_keys["default"]},
    }
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
    os.chmod(temp, 0o600)  # whatever the umask or an older file said
    os.replace(temp, path)

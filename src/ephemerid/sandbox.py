"""What the user's code sees of the runner's environment, and what is masked where it is stored.

The entrypoint gets an allow-listed environment (``user_env``): the contract variables the runner
sets, a ``HOME`` and ``TMPDIR`` in the job's own scratch folder, the spec's own ``env``, and from
the runner's environment only ``PASSED`` names and ``PASSED_PREFIXES``: the locale, the time
zone, the GPU and launcher variables. Nothing else of the runner's (the service's) environment
reaches user code: no connection string, no key, no ``EPHEMERID_HOME``.

``Mask`` replaces the values of configured secrets by ``***`` in what the runner writes to the
job log and result, and in the reasons the service records: any variable that is not passed on
and whose name looks secret (``SECRET_WORDS``, ``KNOWN_SECRETS``), and the key parts of any
connection string (``AccountKey=...``). The runner imports this module: it stays light.
"""

from __future__ import annotations

import ctypes
import os
import re
import site
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from ephemerid import names

CONTRACT = frozenset(
    {
        names.ENV_JOB_ID,
        names.ENV_INPUT_DIR,
        names.ENV_OUTPUT_DIR,
        names.ENV_CHECKPOINT_DIR,
        names.ENV_MODEL_DIR,
        names.ENV_PARAMS,
        names.ENV_METRICS,
    }
)
# What torchrun and Azure ML's PyTorch distribution give each process for torch.distributed.
DISTRIBUTED = frozenset(
    {
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_NAME",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "NODE_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "OMP_NUM_THREADS",
    }
)
# The runner's own variables that user code sees as they are.
PASSED = frozenset({"PATH", "LANG", "TZ", "USER", "LOGNAME", "LD_LIBRARY_PATH", *DISTRIBUTED})
PASSED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "NCCL_", "TORCHELASTIC_")
# Set by the runner or the launcher: a spec's ``env`` may not name them (nor any EPHEMERID_*).
RESERVED = CONTRACT | DISTRIBUTED | {"HOME", "TMPDIR", "PYTHONUNBUFFERED"}

KNOWN_SECRETS = frozenset(
    {
        "EPHEMERID_STORAGE",
        "EPHEMERID_SERVICEBUS",
        "AZURE_CLIENT_SECRET",
        "EPHEMERID_DEV_FUNCTION_KEY",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "EPHEMERID_MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_URI",
    }
)
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CONNECTIONSTRING", "SAS", "CREDENTIAL")
MIN_SECRET_CHARS = 8  # shorter values ("1", "true") would mask ordinary words in a log
MASKED = "***"
_KEY_PART = re.compile(r"(?i)\b(?:AccountKey|SharedAccessKey|SharedAccessSignature|sig)=([^;&\s]+)")
PR_SET_DUMPABLE = 4


def passed(name: str) -> bool:
    """Whether the runner's variable ``name`` reaches user code as it is."""
    return name in PASSED or name.startswith(PASSED_PREFIXES)


def looks_secret(name: str) -> bool:
    plain = name.upper().replace("_", "")
    return name in KNOWN_SECRETS or any(word in plain for word in SECRET_WORDS)


def user_env(
    parent: Mapping[str, str],
    own: Mapping[str, str],
    contract: Mapping[str, str],
    scratch: Path,
) -> dict[str, str]:
    """The entrypoint's whole environment: allow-listed ``parent`` names, the spec's ``own``,
    ``HOME``/``TMPDIR`` under ``scratch``, and the ``contract`` variables, which win."""
    env = {name: value for name, value in parent.items() if passed(name)}
    env.update({name: value for name, value in own.items() if name not in RESERVED})
    python_path = _python_path(own.get("PYTHONPATH", ""))
    if python_path:
        env["PYTHONPATH"] = python_path
    env.update(
        HOME=str(scratch / "home"),
        TMPDIR=str(scratch / "tmp"),
        PYTHONUNBUFFERED="1",
    )
    env.update(contract)
    return env


def _python_path(own: str) -> str:
    """The spec's PYTHONPATH, then the folder holding this ephemerid, so ``ephemerid.track``
    is the runner's own release, unless the interpreter finds it there without being told."""
    paths = [p for p in own.split(os.pathsep) if p]
    root = Path(__file__).resolve().parents[1]
    found = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root not in found:
        paths.append(str(root))
    return os.pathsep.join(paths)


def uri_secrets(uri: str) -> list[str]:
    """What of a URI may be a credential, for a Mask: all of it, its ``user:password`` and its
    password, its query string and each of its values."""
    if not uri:
        return []
    parts = urlsplit(uri)
    found = [uri]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found += [userinfo, userinfo.partition(":")[2]]
    if parts.query:
        found += [parts.query, *(v for _, v in parse_qsl(parts.query))]
    return [f for f in found if f]


class Mask:
    """Replaces each secret value by ``***``; ``Mask.of_env`` finds them in an environment."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        pieces = {line.strip() for secret in secrets for line in secret.splitlines()}
        kept = sorted((p for p in pieces if len(p) >= MIN_SECRET_CHARS), key=len, reverse=True)
        self._texts = kept
        self._bytes = [p.encode() for p in kept]
        self.longest = max((len(b) for b in self._bytes), default=0)

    @classmethod
    def of_env(cls, env: Mapping[str, str]) -> Mask:
        found: list[str] = []
        for name, value in env.items():
            if passed(name):
                continue
            parts = _KEY_PART.findall(value)
            if parts or looks_secret(name):
                found += [value, *parts]
        return cls(found)

    def with_secrets(self, secrets: Iterable[str]) -> Mask:
        return Mask([*self._texts, *secrets])

    def __bool__(self) -> bool:
        return bool(self._texts)

    def __call__(self, text: str) -> str:
        for secret in self._texts:
            text = text.replace(secret, MASKED)
        return text

    def bytes(self, data: bytes) -> bytes:
        for secret in self._bytes:
            data = data.replace(secret, MASKED.encode())
        return data


def undumpable() -> None:
    """Make this process non-dumpable (Linux), so a process of the same user cannot read its
    ``/proc/<pid>/environ`` or memory, nor attach to it. Its children are dumpable again."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        return

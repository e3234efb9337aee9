"""Pull a job's ``environment.image`` on an Azure VM with the VM's managed identity.

The runner on a job VM (told ``EPHEMERID_VM_REGISTRY``, the infra's registry) logs the VM's
docker client in to Azure Container Registry and pulls the image before the job's code starts:

1. a token of the VM's user-assigned identity for ARM, from the instance metadata service
   (``EPHEMERID_IMDS``, ``EPHEMERID_VM_IDENTITY_CLIENT_ID``: the same that the VM's deadline uses);
2. ``POST https://<registry>/oauth2/exchange`` (``grant_type=access_token``) trades it for an ACR
   refresh token (Azure's documented AAD-OAuth flow for registries);
3. ``docker --config <own folder> login --username 00000000-0000-0000-0000-000000000000
   --password-stdin <registry>``: the refresh token goes in on standard input, never on a command
   line, in a log or in a record, into a docker folder of the runner's own (removed after);
4. ``docker pull``, whose output is the job's log; its time is the job's setup.

A token is only ever sent to the infra's registry or a registry ending in ``.azurecr.io``, over
https (plain http only to this machine: the tests' registry); an image from anywhere else is
pulled with no login. Each failure raises PullFailed saying what to grant or fix: the job fails
before its code runs, and its compute is released as for any other end.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ephemerid.envs.build import BuildFailed
from ephemerid.errors import SpecError

ENV_REGISTRY = "EPHEMERID_VM_REGISTRY"
ENV_IMDS = "EPHEMERID_IMDS"
ENV_CLIENT_ID = "EPHEMERID_VM_IDENTITY_CLIENT_ID"
IMDS = "http://169.254.169.254"
ARM_RESOURCE = "https://management.azure.com/"
IDENTITY_API = "2018-02-01"
ACR_SUFFIX = ".azurecr.io"
NULL_USER = "00000000-0000-0000-0000-000000000000"  # ACR's user name for a refresh token
_LOCAL = ("127.0.0.1", "localhost", "::1")
TAIL_LINES = 20

Write = Callable[[bytes], None]


class PullFailed(BuildFailed):
    """The image could not be pulled: the reason says what the VM's identity lacks."""


def registry_of(image: str) -> str:
    """The registry host (``[:port]``) an image name points at; ``docker.io`` when it has none."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def check_pullable(image: str, registry: str) -> None:
    """Refuse at submit, costing nothing, an image azure-vm cannot pull with the VM's identity:
    any image where no registry is configured, or one from a registry that is not ACR."""
    where = f"environment.image '{image}'"
    if not registry:
        raise SpecError(
            f"{where}: azure-vm pulls images with the VMs' identity from the infra's registry, "
            f"and none is configured ({ENV_REGISTRY}): deploy with enableRegistry=true "
            "(docs/deploy.md), or use environment.requirements"
        )
    source = registry_of(image)
    if source != registry and not source.endswith(ACR_SUFFIX):
        raise SpecError(
            f"{where} is on {source}: azure-vm pulls only from Azure Container Registry, with the "
            f"VMs' identity (AcrPull): push or import it to {registry} (az acr import), and "
            f"name it {registry}/<name>:<tag>"
        )


@dataclass(frozen=True)
class Registries:
    """Which registries the VM's identity logs in to, and where it gets its token."""

    registry: str  # the infra's registry (its login server); empty: none configured
    imds: str = IMDS
    client_id: str = ""
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Registries | None:
        """Those the VM was told (None where no registry is: not a VM that pulls with identity)."""
        registry = env.get(ENV_REGISTRY, "")
        if not registry:
            return None
        return cls(registry, env.get(ENV_IMDS) or IMDS, env.get(ENV_CLIENT_ID, ""))

    def trusted(self, registry: str) -> bool:
        """Whether the identity's token may be sent to ``registry``."""
        return registry == self.registry or registry.endswith(ACR_SUFFIX)

    def pull(self, image: str, config: Path, env: Mapping[str, str], write: Write) -> None:
        """Log in where the identity may, then ``docker pull image``; PullFailed if either fails."""
        registry = registry_of(image)
        if self.trusted(registry):
            write(f"logging in to {registry} with the VM's identity\n".encode())
            self._login(registry, self._refresh_token(registry), config, env)
        else:
            note = f"{registry} is not an Azure Container Registry: pulling with no login\n"
            write(note.encode())
        pulled = _docker(["--config", str(config), "pull", image], env, write=write)
        if pulled.returncode != 0:
            raise PullFailed(
                f"environment.image: docker pull {image} failed (exit {pulled.returncode}): "
                f"{_denied(registry)}; last output:\n{pulled.tail}"
            )

    def _refresh_token(self, registry: str) -> str:
        import urllib.error  # here, not at the top: the runner imports this module at each start
        import urllib.parse
        import urllib.request

        aad = self._aad_token()
        form = {"grant_type": "access_token", "service": registry.partition(":")[0]}
        body = urllib.parse.urlencode({**form, "access_token": aad}).encode()
        url = f"{_scheme(registry)}://{registry}/oauth2/exchange"
        request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 (https)
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                token = json.load(answer).get("refresh_token")
        except urllib.error.HTTPError as exc:
            raise PullFailed(
                f"environment.image: {registry} refused the VM's identity ({exc.code} from its "
                f"token exchange): {_denied(registry)}"
            ) from None
        except (OSError, ValueError) as exc:
            raise PullFailed(f"environment.image: cannot reach {registry}: {exc}") from None
        if not isinstance(token, str) or not token:
            raise PullFailed(f"environment.image: {registry} answered its exchange with no token")
        return token

    def _aad_token(self) -> str:
        import urllib.parse
        import urllib.request

        query = {"api-version": IDENTITY_API, "resource": ARM_RESOURCE}
        if self.client_id:
            query["client_id"] = self.client_id
        url = f"{self.imds.rstrip('/')}/metadata/identity/oauth2/token?"
        request = urllib.request.Request(url + urllib.parse.urlencode(query))  # noqa: S310
        request.add_header("Metadata", "true")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                return str(json.load(answer)["access_token"])
        except (OSError, ValueError, KeyError) as exc:
            raise PullFailed(
                f"environment.image: no token for the VM's identity from its metadata service "
                f"({exc}): the VM needs its user-assigned identity (EPHEMERID_VM_IDENTITY_ID)"
            ) from None

    def _login(self, registry: str, token: str, config: Path, env: Mapping[str, str]) -> None:
        argv = ["--config", str(config), "login", "--username", NULL_USER, "--password-stdin"]
        logged = _docker([*argv, registry], env, stdin=token)
        if logged.returncode != 0:
            raise PullFailed(
                f"environment.image: docker login to {registry} failed (exit "
                f"{logged.returncode}): {logged.tail}"
            )


@dataclass(frozen=True)
class _Ran:
    returncode: int
    tail: str


def _docker(
    args: list[str], env: Mapping[str, str], *, stdin: str = "", write: Write | None = None
) -> _Ran:
    """``docker args...``, an argument list with no shell; its output to ``write`` as it comes."""
    lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            ["docker", *args],
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except FileNotFoundError:
        raise PullFailed(
            "environment.image: this VM has no docker: use a VM image with docker and the NVIDIA "
            "Container Toolkit (EPHEMERID_VM_IMAGE; the default one has both)"
        ) from None
    assert proc.stdin is not None and proc.stdout is not None
    with proc.stdin:
        proc.stdin.write(stdin.encode())
    with proc.stdout:
        for line in proc.stdout:
            lines.append(line.decode(errors="replace").rstrip())
            if write is not None:
                write(line)
    return _Ran(proc.wait(), "\n".join(lines))


def _denied(registry: str) -> str:
    return (
        f"grant the VM identity AcrPull on {registry} (the infra does so on its own registry: "
        "enableRegistry), or push the image to the infra's registry"
    )


def _scheme(registry: str) -> str:
    """https, except to this machine (a test's registry): a token never crosses plain http."""
    host = registry.rpartition(":")[0] if registry.count(":") == 1 else registry
    return "http" if host in _LOCAL else "https"

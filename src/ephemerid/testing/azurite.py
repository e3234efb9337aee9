"""Start Azurite (the Azure Storage emulator) on free loopback ports, and always stop it.

``python -m ephemerid.testing.azurite -- pytest`` runs a command with Azurite up and its
connection string in ``AZURITE_CONNECTION_STRING``; Azurite is stopped when the command ends,
fails or is interrupted. Azurite comes from npm (``npm ci`` installs the pinned version into
``node_modules``) and always runs with ``--disableTelemetry`` and in-memory persistence.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Azurite's well-known development account; it is public and works only against the emulator.
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
ENV = "AZURITE_CONNECTION_STRING"


@dataclass(frozen=True)
class Azurite:
    blob_port: int
    queue_port: int
    table_port: int

    @property
    def connection_string(self) -> str:
        host = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={host}:{self.blob_port}/{ACCOUNT};"
            f"QueueEndpoint={host}:{self.queue_port}/{ACCOUNT};"
            f"TableEndpoint={host}:{self.table_port}/{ACCOUNT};"
        )


def find_binary(start: Path | None = None) -> Path | None:
    """``node_modules/.bin/azurite`` in this folder or a parent, else one on PATH."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "node_modules" / ".bin" / "azurite"
        if candidate.is_file():
            return candidate
    found = shutil.which("azurite")
    return Path(found) if found else None


def free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


@contextmanager
def running(binary: Path, timeout: float = 60.0) -> Iterator[Azurite]:
    """Azurite on free loopback ports for the length of the ``with`` block."""
    azurite = Azurite(*free_ports(3))
    workspace = tempfile.mkdtemp(prefix="azurite-")
    command = [
        str(binary), "--silent", "--disableTelemetry", "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--blobHost", "127.0.0.1", "--blobPort", str(azurite.blob_port),
        "--queueHost", "127.0.0.1", "--queuePort", str(azurite.queue_port),
        "--tableHost", "127.0.0.1", "--tablePort", str(azurite.table_port),
    ]  # fmt: skip
    log = Path(workspace, "azurite.log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=workspace, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        try:
            _wait_listening(proc, azurite, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; Azurite said:\n{log.read_text()[-2000:]}") from exc
        yield azurite
    finally:
        _stop(proc)
        shutil.rmtree(workspace, ignore_errors=True)


def _wait_listening(proc: subprocess.Popen[bytes], azurite: Azurite, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for port in (azurite.blob_port, azurite.queue_port, azurite.table_port):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with code {proc.returncode} while starting")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"Azurite did not listen on port {port} in {timeout}s"
                    ) from None
                time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    if not command:
        print("usage: python -m ephemerid.testing.azurite -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    binary = find_binary()
    if binary is None:
        print("azurite is not installed: run `npm ci` (package.json pins it)", file=sys.stderr)
        return 2
    # SIGTERM (a CI timeout, say) must still stop Azurite: turn it into an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with running(binary) as azurite:
        env = {**os.environ, ENV: azurite.connection_string}
        print(
            f"azurite: blob {azurite.blob_port}, queue {azurite.queue_port}, "
            f"table {azurite.table_port} on 127.0.0.1",
            file=sys.stderr,
        )
        return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

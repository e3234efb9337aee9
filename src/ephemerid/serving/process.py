"""One loaded model version: its worker process, and the one call in flight on its pipes.

``ModelProcess.start`` runs ``ephemerid.serving.worker`` with the allow-listed environment of
``sandbox.user_env`` (no key, no connection string reaches it), in its own session, and waits
for its READY (the input fields) or FATAL (``LoadFailed``, the reason). Once ``attach``-ed to the
service's event loop, ``predict`` sends one table and awaits its rows (one call at a time).
``close`` ends the worker and anything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import pyarrow as pa

from ephemerid import names, sandbox
from ephemerid.errors import EphemeridError
from ephemerid.models import ModelVersion
from ephemerid.serving import wire

CLOSE_S = 10.0  # how long a closed worker has to end before it is killed
MAX_FRAME = 2**31 - 1


class LoadFailed(EphemeridError):
    """The version's worker did not become ready: its ``load`` (or import) raised, or it died."""


class PredictFailed(EphemeridError):
    """The model's ``predict`` raised, or returned what cannot be answered: a short reason."""


@dataclass(frozen=True)
class Loadable:
    """What a version's worker is started with."""

    version: ModelVersion
    entry: Path  # the module defining load/predict
    model_dir: Path  # the version's files, downloaded
    scratch: Path  # its HOME and TMPDIR
    python: str = sys.executable  # the model's environment's interpreter


@dataclass(frozen=True)
class Field:
    name: str
    type: str | None  # an Arrow type name; None: any


class ModelProcess:
    def __init__(self, loadable: Loadable) -> None:
        self.loadable = loadable
        self.fields: list[Field] = []
        self.predict_calls = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._turn: asyncio.Lock | None = None

    @property
    def version(self) -> ModelVersion:
        return self.loadable.version

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> ModelProcess:
        """Start the worker and wait for its load; LoadFailed naming the version and why."""
        item = self.loadable
        for sub in ("home", "tmp"):
            (item.scratch / sub).mkdir(parents=True, exist_ok=True)
        contract = {names.ENV_MODEL_DIR: str(item.model_dir)}
        env = sandbox.user_env(os.environ, {}, contract, item.scratch)
        command = [item.python, "-m", "ephemerid.serving.worker", str(item.entry)]
        self._proc = subprocess.Popen(
            [*command, str(item.model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=item.entry.parent,
            start_new_session=True,
        )
        try:
            kind, data = wire.receive(self._out)
        except wire.Closed:
            code = self._proc.wait()
            self.close()
            raise LoadFailed(
                f"{item.version.ref}: its worker exited ({code}) before loading"
            ) from None
        if kind != wire.READY:
            self.close()
            raise LoadFailed(f"{item.version.ref}: {data.decode(errors='replace')}")
        fields = json.loads(data)["fields"]
        self.fields = [Field(str(f["name"]), f.get("type")) for f in fields]
        return self

    @property
    def _out(self) -> BinaryIO:
        assert self._proc is not None and self._proc.stdout is not None
        return cast(BinaryIO, self._proc.stdout)

    async def attach(self) -> None:
        """Talk to the started worker from this event loop, without a thread: a thread woken by
        the pipe would wait for the loop's GIL (up to the 5 ms switch interval) under load."""
        assert self._proc is not None and self._proc.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_FRAME)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), self._out)
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, self._proc.stdin
        )
        self._reader = reader
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._turn = asyncio.Lock()

    async def predict(self, table: pa.Table) -> pa.Table:
        """The model's rows for ``table``; PredictFailed with a short reason."""
        assert self._reader is not None and self._writer is not None and self._turn is not None
        payload = wire.encode(table)
        async with self._turn:
            self.predict_calls += 1
            try:
                self._writer.write(wire.frame(wire.PREDICT, payload))  # one write, one wake-up
                await self._writer.drain()
                length, kind = wire.unpack(await self._reader.readexactly(wire.HEAD_SIZE))
                data = await self._reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                raise PredictFailed(f"the worker of {self.version.ref} ended") from None
        if kind != wire.ROWS:
            raise PredictFailed(data.decode(errors="replace")[:500])
        return wire.decode(data)

    async def aclose(self) -> None:
        """``close`` from the event loop the worker was attached to."""
        if self._writer is not None:
            self._writer.close()  # the worker reads the end of its input, and exits
            self._writer = None
        await asyncio.to_thread(self.close)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self, timeout: float = CLOSE_S) -> None:
        """End the worker: its pipe closed, then its whole session killed if it lingers."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything the model's code started, too
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

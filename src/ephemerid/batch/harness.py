"""The runner's side of the batch harness: every byte of the bucket read and written here.

A predict job runs under the harness when ``ephemerid.batch.mode`` says so. The entrypoint
process then runs ``ephemerid.batch.worker`` instead of the script, and the runner
talks to it over two FIFOs in the work folder (Arrow IPC streams): the features of each batch
in, its predictions out. Threads overlap the work, with bounded queues so memory stays flat:

    read (decode the next batch) -> feed (to the worker) -> collect (pair with the kept
    columns, cut shards) -> upload (shard, then the manifest listing it)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from ephemerid.artifacts import ArtifactStore, get_bytes, put_bytes
from ephemerid.batch import manifest as mf
from ephemerid.batch.formats import SUFFIX, InputError, ShardWriter
from ephemerid.batch.inputs import Piece, Reader, input_files, split
from ephemerid.batch.spec import BatchSpec
from ephemerid.contract import Launch, Result, RunStatus

DEPTH = 2  # batches decoded ahead, and shards waiting for upload
JOIN_S = 3600.0  # the last shard's upload, once the worker has ended


class _Ended(Exception):
    """The worker ended early: its own error file says why, if it could."""


class _Stopped(Exception):
    """Another step failed: this one ends quietly."""


class Harness:
    def __init__(
        self,
        store: ArtifactStore,
        launch: Launch,
        spec: BatchSpec,
        work: Path,
        say: Callable[[str], None],
    ) -> None:
        self.store, self.launch, self.spec, self.say = store, launch, spec, say
        self.job_id = launch.job_id
        self.folder = work / "batch"
        self.inbound, self.outbound = self.folder / "in.fifo", self.folder / "out.fifo"
        self.error_file = self.folder / "error.txt"
        self.error = ""  # what was wrong with the input or the predictions: the job's reason
        self.internal = ""  # anything else, as the reason only when the worker says nothing
        self.stop = threading.Event()  # a step failed: the others end
        self.collected = threading.Event()  # no more shards will be cut
        self.proc: subprocess.Popen[bytes] | None = None
        self.pending: queue.Queue[tuple[pa.Table, Piece] | None] = queue.Queue(DEPTH)
        self.finished: queue.Queue[tuple[ShardWriter, mf.Shard] | None] = queue.Queue(DEPTH)
        self.threads: list[threading.Thread] = []
        self.manifest_key = mf.predictions_key(self.job_id, mf.MANIFEST_FILE)
        self.manifest = self._manifest()
        self.reader: Reader | None = None

    def prepare(self, user: pwd.struct_passwd | None) -> None:
        """The FIFOs, made before the worker starts; its user may write its error file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in (self.inbound, self.outbound, self.error_file):
            path.unlink(missing_ok=True)
        os.mkfifo(self.inbound, 0o600)
        os.mkfifo(self.outbound, 0o600)
        if user is not None:
            for path in (self.folder, self.inbound, self.outbound):
                os.chown(path, user.pw_uid, user.pw_gid)

    def command(self, command: list[str], entry: Path) -> list[str]:
        """The entrypoint's command, running the worker over ``entry`` instead."""
        at = command.index(str(entry))
        worker = ["-m", "ephemerid.batch.worker", str(entry), str(self.inbound)]
        worker += [str(self.outbound), str(self.error_file), "--as", self.spec.as_]
        return [*command[:at], *worker, *command[at + 1 :]]

    def start(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.reader = Reader(self.store, self.spec, [])
        for step in (self._feed, self._collect, self._upload):
            thread = threading.Thread(target=self._guarded, args=(step,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self, result: Result) -> None:
        """Once the worker has ended: the job's result from what the harness saw."""
        deadline = time.monotonic() + JOIN_S
        while any(t.is_alive() for t in self.threads) and time.monotonic() < deadline:
            self._unblock()  # again and again: a step may reach its FIFO only now
            for thread in self.threads:
                thread.join(0.2)
        worker = self.error_file.read_text() if self.error_file.is_file() else ""
        reason = self.error or worker or self.internal
        if result.status in (RunStatus.TIMED_OUT, RunStatus.EVICTED):
            pass  # stopped from outside: its reason stands, and a rerun resumes
        elif reason:
            result.status, result.reason = RunStatus.FAILED, reason
        elif result.status is RunStatus.SUCCEEDED and not self.manifest.complete:
            result.status = RunStatus.FAILED
            result.reason = "the batch worker ended before every row was scored"
        if result.status is RunStatus.SUCCEEDED:
            m = self.manifest
            self.say(f"scored {m.rows} row(s) into {len(m.shards)} shard(s), {m.bytes} bytes")
        if self.manifest.bad_rows:
            self.say(f"skipped {self.manifest.bad_rows} malformed row(s) (batch.on_bad_rows)")

    def uploaded(self, keys: list[str], size: int) -> tuple[list[str], int]:
        """``keys`` and ``size`` with the shards and the manifest the harness uploaded."""
        done = self.store.stat(self.manifest_key) is not None
        keys = [*keys, *(shard.key for shard in self.manifest.shards)]
        return keys + ([self.manifest_key] if done else []), size + self.manifest.bytes

    # -- the threads ---------------------------------------------------------------------------

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            step()
        except _Stopped:
            pass
        except _Ended as exc:
            self._fail(internal=str(exc))
        except InputError as exc:
            self._fail(str(exc))
        except BrokenPipeError:
            self._fail()  # the worker ended: its error file says why
        except Exception as exc:
            self._fail(internal=f"batch harness error: {type(exc).__name__}: {exc}")

    def _fail(self, reason: str = "", internal: str = "") -> None:
        if reason and not self.error:
            self.error = reason
            self.say(reason)
        if internal and not self.internal:
            self.internal = internal
            self.say(internal)
        self.stop.set()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _put(self, line: queue.Queue[Any], item: Any) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                return line.put(item, timeout=0.2)
        raise _Stopped

    def _get(self, line: queue.Queue[Any]) -> Any:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Empty):
                return line.get(timeout=0.2)
        raise _Stopped

    def _feed(self) -> None:
        assert self.reader is not None
        self.reader.files = input_files(self.store, self.launch.inputs)
        skip = self.manifest.done_rows
        if skip:
            self.say(f"resuming: {len(self.manifest.shards)} shard(s), {skip} row(s) done")
        with self.inbound.open("wb", buffering=0) as sink:  # each batch sent as written
            writer: Any = None
            for piece in _ahead(self.reader.pieces(skip), self.stop):
                kept, features = split(self.spec, piece.batch)
                if writer is None:
                    schema = features.schema
                    writer = ipc.new_stream(sink, schema)
                elif features.schema != schema:
                    features = _like(piece.key, features, schema)
                self._put(self.pending, (kept, piece))
                writer.write_batch(features)
            if writer is not None:
                writer.close()
        self._put(self.pending, None)

    def _collect(self) -> None:
        try:
            self._answers(_Cutter(self, len(self.manifest.shards), self.manifest.done_rows))
        finally:
            self.collected.set()  # the upload drains what was cut, then ends

    def _answers(self, cutter: _Cutter) -> None:
        with self.outbound.open("rb") as source:
            item = self._get(self.pending)
            if item is None:
                return self._last(cutter)
            try:
                answers = ipc.open_stream(source)
            except pa.ArrowInvalid:  # no stream: the worker ended before answering
                raise _Ended("the batch worker ended before every row was scored") from None
            for answer in answers:
                if item is None:
                    raise InputError("predict answered more batches than it was given")
                kept, piece = item
                cutter.add(self._joined(kept, piece, answer), piece)
                item = self._get(self.pending)
            if item is not None:
                raise _Ended("the batch worker ended before every row was scored")
        return self._last(cutter)

    def _last(self, cutter: _Cutter) -> None:
        """Every row answered: the last shard, however short, then the end."""
        if not self.stop.is_set():
            cutter.close()
            self._put(self.finished, None)

    def _joined(self, kept: pa.Table, piece: Piece, answer: pa.RecordBatch) -> pa.Table:
        rows = piece.batch.num_rows
        if answer.num_rows != rows:
            raise InputError(
                f"predict returned {answer.num_rows} row(s) for a batch of {rows} "
                f"(input '{piece.key}', rows {piece.start}-{piece.start + rows - 1}): it must "
                "return one row per input row"
            )
        clash = [name for name in answer.schema.names if name in kept.column_names]
        if clash:
            raise InputError(
                f"predict returned column(s) {', '.join(clash)} that batch.keep carries: "
                "rename them"
            )
        table = kept
        for name, column in zip(answer.schema.names, answer.columns, strict=True):
            table = table.append_column(name, column)
        return table

    def _upload(self) -> None:
        """Each shard cut, then the manifest listing it; after a failure, the shards already
        cut still go up (they are complete), and the manifest is never marked complete."""
        while True:
            try:
                item = self.finished.get(timeout=0.2)
            except queue.Empty:
                if self.collected.is_set():
                    return
                continue
            if item is None:
                break
            writer, shard = item
            with writer.path.open("rb") as stream:
                self.store.write(shard.key, stream)
            writer.path.unlink()
            self.manifest.add(shard)
            self.manifest.bad_rows = self.reader.bad_rows if self.reader else 0
            put_bytes(self.store, self.manifest_key, self.manifest.dumps())
        if not self.stop.is_set():
            self.manifest.complete = True
            self.manifest.bad_rows = self.reader.bad_rows if self.reader else 0
            put_bytes(self.store, self.manifest_key, self.manifest.dumps())

    def _unblock(self) -> None:
        """Let a thread still opening a FIFO go on, the worker having ended: the in-stream's
        writer gets a broken pipe, the out-stream's reader an end of file."""
        for path, flags in ((self.inbound, os.O_RDONLY), (self.outbound, os.O_WRONLY)):
            with contextlib.suppress(OSError):
                os.close(os.open(path, flags | os.O_NONBLOCK))

    def _manifest(self) -> mf.Manifest:
        stat = self.store.stat(self.manifest_key)
        if stat is not None:
            found = mf.Manifest.loads(get_bytes(self.store, self.manifest_key), self.manifest_key)
            if (found.output_format, found.max_rows_per_shard) == self._shape():
                return found.model_copy(update={"complete": False})
        fmt, size = self._shape()
        return mf.Manifest(job_id=self.job_id, output_format=fmt, max_rows_per_shard=size)

    def _shape(self) -> tuple[str, int]:
        return self.spec.output_format, self.spec.max_rows_per_shard


class _Cutter:
    """Cuts the scored rows into shards of ``max_rows_per_shard``, from shard ``index`` on."""

    def __init__(self, harness: Harness, index: int, start: int) -> None:
        self.harness, self.index, self.start = harness, index, start
        self.size = harness.spec.max_rows_per_shard
        self.writer: ShardWriter | None = None
        self.inputs: list[mf.InputRange] = []

    def add(self, table: pa.Table, piece: Piece) -> None:
        done = 0
        while done < table.num_rows:
            writer = self.writer or self._open()
            take = min(table.num_rows - done, self.size - writer.rows)
            writer.write(table.slice(done, take))
            self._note(piece.key, piece.start + done, piece.start + done + take)
            done += take
            if writer.rows == self.size:
                self.close()

    def _open(self) -> ShardWriter:
        fmt = self.harness.spec.output_format
        name = mf.shard_name(self.index, SUFFIX[fmt])
        self.writer = ShardWriter(self.harness.folder / name, fmt, self.harness.spec.keep)
        return self.writer

    def _note(self, key: str, start: int, end: int) -> None:
        last = self.inputs[-1] if self.inputs else None
        if last is not None and last.key == key and last.end == start:
            self.inputs[-1] = mf.InputRange(key=key, start=last.start, end=end)
        else:
            self.inputs.append(mf.InputRange(key=key, start=start, end=end))

    def close(self) -> None:
        writer = self.writer
        if writer is None:
            return
        writer.close()
        key = mf.predictions_key(self.harness.job_id, writer.path.name)
        size = writer.path.stat().st_size
        shard = mf.Shard(
            key=key, rows=writer.rows, bytes=size, start=self.start, inputs=self.inputs
        )
        self.harness._put(self.harness.finished, (writer, shard))
        self.index, self.start = self.index + 1, self.start + writer.rows
        self.writer, self.inputs = None, []


def _ahead(pieces: Iterator[Piece], stop: threading.Event) -> Iterator[Piece]:
    """``pieces`` decoded in a thread, at most DEPTH ahead of their use."""
    ahead: queue.Queue[Any] = queue.Queue(DEPTH)

    def put(item: Any) -> None:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                return ahead.put(item, timeout=0.2)

    def read() -> None:
        try:
            for piece in pieces:
                put(piece)
                if stop.is_set():
                    return
            put(None)
        except BaseException as exc:
            put(exc)

    threading.Thread(target=read, daemon=True).start()
    while True:
        try:
            item = ahead.get(timeout=0.2)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped from None
            continue
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _like(key: str, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.names != schema.names:
        raise InputError(
            f"input '{key}' has columns {', '.join(batch.schema.names)}, but the inputs before "
            f"it {', '.join(schema.names)}: every input file needs the same columns"
        )
    try:
        return batch.cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise InputError(
            f"input '{key}': its column types differ from the first input's: {exc}"
        ) from exc

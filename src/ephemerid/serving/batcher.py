"""Micro-batching: the requests waiting for one version, scored together in one ``predict``.

A ``Batcher`` takes the requests queued for its version (same columns, up to ``max_batch_rows``
rows, always at least one request), and when fewer rows than that are queued while other
requests are still being read (``arriving``), waits up to ``max_wait_s`` for them. One call is
in flight per version; the requests that arrive meanwhile make the next batch, so a lone caller
never waits and many callers share calls. Each caller gets back exactly its own rows, sliced in
order from the answer. A batch whose ``predict`` fails is scored again request by request, so
only the request that makes the model raise gets the error. ``max_batch_rows=1`` is no batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from ephemerid.serving.process import ModelProcess, PredictFailed


@dataclass
class _Pending:
    table: pa.Table
    future: asyncio.Future[pa.Table]


class Batcher:
    def __init__(
        self,
        process: ModelProcess,
        max_batch_rows: int,
        max_wait_s: float,
        arriving: Callable[[], int] = lambda: 0,
    ) -> None:
        self.process = process
        self.max_batch_rows, self.max_wait_s, self.arriving = max_batch_rows, max_wait_s, arriving
        self.in_flight = 0  # requests given to predict() and not yet answered
        self.batches = 0
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Batcher:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def predict(self, table: pa.Table) -> pa.Table:
        """The model's rows for ``table``, scored with whatever else is waiting."""
        future: asyncio.Future[pa.Table] = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        self._idle.clear()
        self._queue.append(_Pending(table, future))
        self._wake.set()
        try:
            return await future
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self) -> None:
        """Until every request given to this batcher has its answer."""
        await self._idle.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(PredictFailed("the service is stopping"))

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = await self._collect()
            await self._score(batch)

    async def _collect(self) -> list[_Pending]:
        batch = [self._queue.popleft()]
        rows = batch[0].table.num_rows
        deadline = time.monotonic() + self.max_wait_s
        while rows < self.max_batch_rows:
            rows += self._take(batch, rows)
            left = deadline - time.monotonic()
            if rows >= self.max_batch_rows or left <= 0 or self.arriving() == 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                rows += self._take(batch, rows)
                break
        return batch

    def _take(self, batch: list[_Pending], rows: int) -> int:
        """Move queued requests of the batch's columns into it while they fit; rows taken."""
        schema, taken, kept = batch[0].table.schema, 0, deque[_Pending]()
        while self._queue:
            pending = self._queue.popleft()
            size = pending.table.num_rows
            if pending.table.schema.equals(schema) and rows + taken + size <= self.max_batch_rows:
                batch.append(pending)
                taken += size
            else:
                kept.append(pending)
        self._queue.extendleft(reversed(kept))
        return taken

    async def _score(self, batch: list[_Pending]) -> None:
        self.batches += 1
        combined = pa.concat_tables([p.table for p in batch]) if len(batch) > 1 else batch[0].table
        try:
            out = await self.process.predict(combined)
        except PredictFailed as exc:
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            for pending in batch:  # only the request that makes it raise fails
                await self._score([pending])
            return
        start = 0
        for pending in batch:
            size = pending.table.num_rows
            if not pending.future.done():
                pending.future.set_result(out.slice(start, size))
            start += size


def _fail(pending: _Pending, exc: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(exc)

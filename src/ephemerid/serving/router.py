"""The versions being served, which one answers a request, and following the registry.

Each lane of the split (one lane without a split) serves one version at a time. ``start`` loads
each lane's version; ``follow`` polls the lanes' aliases every ``poll_s`` and, when one moved,
loads the new version in a new worker beside the old, switches the lane only once it is
loaded, and retires the old one once no request holds it (``hold`` keeps a version from the
moment a request is routed until it is answered, so no in-flight request fails). A version whose
load fails is not switched to and not tried again until its alias moves on; ``health`` says why.
``pin`` stays on the versions loaded at start.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from ephemerid.errors import EphemeridError, NotFound
from ephemerid.models import ModelRegistry, ModelVersion
from ephemerid.serving.batcher import Batcher
from ephemerid.serving.plan import Lane, pick
from ephemerid.serving.process import LoadFailed, ModelProcess
from ephemerid.serving.source import Sources

Key = tuple[str, int]


@dataclass
class Served:
    """One loaded version: its worker, its batcher, and the requests holding it."""

    process: ModelProcess
    batcher: Batcher
    users: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def version(self) -> ModelVersion:
        return self.process.version


@dataclass
class Batching:
    max_batch_rows: int
    max_wait_s: float
    arriving: Callable[[], int] = lambda: 0


class Router:
    def __init__(
        self,
        models: ModelRegistry,
        sources: Sources,
        lanes: list[Lane],
        batching: Batching,
        pin: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.models, self.sources, self.lanes, self.batching = models, sources, lanes, batching
        self.pin = pin
        self.rng = rng or random.Random()
        self.current: list[Served | None] = [None] * len(lanes)
        self.loaded: dict[Key, Served] = {}
        self.failed: dict[Key, str] = {}  # versions whose load failed, and why
        self.switches = 0
        self._calls_before: dict[Key, int] = {}  # predict calls of versions already retired

    async def start(self) -> None:
        """Load each lane's version; the first that cannot be loaded is raised (nothing serves)."""
        for index, lane in enumerate(self.lanes):
            version = self.models.resolve(lane.ref)
            self.current[index] = await self._load(version)

    def names(self) -> list[str]:
        return sorted({lane.ref.name for lane in self.lanes})

    def hold(self, name: str, route_key: str | None, version: int | None = None) -> Served:
        """The version that answers this request, held until ``release``; NotFound if this
        service serves no such model (or version)."""
        served = self._choose(name, route_key, version)
        served.users += 1
        served.released.clear()
        return served

    def release(self, served: Served) -> None:
        served.users -= 1
        if served.users == 0:
            served.released.set()

    def _choose(self, name: str, route_key: str | None, version: int | None) -> Served:
        lanes = [
            (lane, served)
            for lane, served in zip(self.lanes, self.current, strict=True)
            if lane.ref.name == name and served is not None
        ]
        if not lanes:
            have = ", ".join(self.names())
            raise NotFound(f"this service serves no model '{name}' (it serves {have})")
        if version is not None:
            found = [s for _, s in lanes if s.version.version == version]
            if not found:
                serving = ", ".join(sorted({str(s.version.version) for _, s in lanes}))
                raise NotFound(
                    f"model '{name}' version {version} is not served (serving {serving})"
                )
            return found[0]
        index = pick([lane.weight for lane, _ in lanes], route_key, self.rng)
        return lanes[index][1]

    async def follow(self, poll_s: float) -> None:
        """Poll the aliases forever (until cancelled); a no-op when pinned."""
        if self.pin or all(lane.ref.alias is None for lane in self.lanes):
            return
        while True:
            await asyncio.sleep(poll_s)
            await self.check_once()

    async def check_once(self) -> None:
        for index, lane in enumerate(self.lanes):
            if lane.ref.alias is None or self.pin:
                continue
            try:
                version = await asyncio.to_thread(self.models.resolve, lane.ref)
            except EphemeridError as exc:  # the alias gone, storage down: keep serving
                print(f"[ephemerid serve] {lane.ref}: {exc}", file=sys.stderr, flush=True)
                continue
            old = self.current[index]
            key = (version.name, version.version)
            if (old is not None and old.version.version == version.version) or key in self.failed:
                continue
            try:
                new = await self._load(version)
            except LoadFailed:
                continue  # _load kept the reason: health shows it, the old one serves on
            self.current[index] = new
            self.switches += 1
            if old is not None:
                await self._retire(old)

    async def _load(self, version: ModelVersion) -> Served:
        key = (version.name, version.version)
        if key in self.loaded:
            return self.loaded[key]
        try:
            loadable = await asyncio.to_thread(self.sources.loadable, version)
            process = await asyncio.to_thread(ModelProcess(loadable).start)
            await process.attach()
        except LoadFailed as exc:
            self.failed[key] = str(exc)
            print(f"[ephemerid serve] not switching to {version.ref}: {exc}", file=sys.stderr)
            raise
        except EphemeridError as exc:
            self.failed[key] = str(exc)
            raise LoadFailed(f"{version.ref}: {exc}") from exc
        b = self.batching
        served = Served(process, Batcher(process, b.max_batch_rows, b.max_wait_s, b.arriving))
        served.batcher.start()
        served.released.set()
        self.loaded[key] = served
        return served

    async def _retire(self, old: Served) -> None:
        """Let ``old`` go once no lane serves it and no request holds it."""
        if any(s is old for s in self.current):
            return
        while old.users:
            await old.released.wait()
        await old.batcher.drain()
        key = (old.version.name, old.version.version)
        self.loaded.pop(key, None)
        self._calls_before[key] = self._calls_before.get(key, 0) + old.process.predict_calls
        await old.batcher.close()
        await old.process.aclose()

    async def close(self) -> None:
        self.current = [None] * len(self.lanes)
        for served in list(self.loaded.values()):
            await served.batcher.close()
            await served.process.aclose()
        self.loaded.clear()

    def health(self) -> list[dict[str, object]]:
        """Per version: loaded, serving (in which lanes, at what weight) and its load error."""
        found: dict[Key, dict[str, object]] = {}
        for key, served in self.loaded.items():
            process = served.process
            found[key] = {"model": key[0], "version": key[1], "loaded": process.alive()}
            found[key]["pid"] = process.pid
        for key, reason in self.failed.items():
            found.setdefault(key, {"model": key[0], "version": key[1], "loaded": False})
            found[key]["error"] = reason
        for key, item in found.items():
            lanes = [
                str(lane.ref)
                for lane, served in zip(self.lanes, self.current, strict=True)
                if served is not None and (served.version.name, served.version.version) == key
            ]
            item["serving"] = bool(lanes)
            item["lanes"] = lanes
            item.setdefault("error", "")
        return [found[k] for k in sorted(found)]

    def predict_calls(self) -> dict[Key, int]:
        calls = dict(self._calls_before)
        for key, served in self.loaded.items():
            calls[key] = calls.get(key, 0) + served.process.predict_calls
        return calls

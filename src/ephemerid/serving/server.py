"""The prediction service assembled from its settings, and run on uvicorn.

``build`` makes the front (keys, limits, router) from ``ServingSettings`` and the ordinary
``Settings`` (the bucket the registry lives in); ``run`` serves until stopped, or until no
request came for ``idle_exit_s`` (probes of /healthz do not count), then ends every worker.
``Running`` serves in a thread of this process, for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from ephemerid.artifacts import open_artifacts
from ephemerid.models import ModelRegistry
from ephemerid.serving.app import Front, Limits, build_app
from ephemerid.serving.guard import Keys, RateLimits
from ephemerid.serving.metrics import Metrics
from ephemerid.serving.plan import lanes_for
from ephemerid.serving.router import Batching, Router
from ephemerid.serving.settings import ServingSettings
from ephemerid.serving.source import Sources, check_entry
from ephemerid.settings import Settings

IDLE_CHECK_S = 0.5


@dataclass(frozen=True)
class Ready:
    url: str
    port: int
    versions: list[dict[str, object]]


class PredictionService:
    def __init__(
        self, serving: ServingSettings, settings: Settings, rng: random.Random | None = None
    ) -> None:
        self.serving, self.settings = serving, settings
        check_entry(serving.code, serving.entrypoint)
        lanes = lanes_for(serving.model, serving.split)
        keys = Keys.of(serving.named_keys(), serving.keys_file)
        artifacts = open_artifacts(settings.artifacts_url, settings.storage.as_env())
        root = settings.home / "serving" / "models"
        sources = Sources(
            artifacts, root, serving.code, serving.entrypoint, envs=settings.home / "envs"
        )
        self.front: Front
        batching = Batching(
            serving.max_batch_rows, serving.max_wait_ms / 1000.0, lambda: self.front.arriving
        )
        self.router = Router(
            ModelRegistry(artifacts), sources, lanes, batching, pin=serving.pin, rng=rng
        )
        rates = RateLimits(serving.rate_per_s, serving.burst)
        limits = Limits(serving.max_body_bytes, serving.max_rows)
        self.front = Front(self.router, keys, rates, limits, Metrics())
        self.idle_exited = False
        self._server: uvicorn.Server | None = None

    def app(self) -> ASGIApp:
        """The routes; the router must be started (``serve`` does) before they answer."""

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            tasks = [asyncio.create_task(self.router.follow(self.serving.poll_s))]
            if self.serving.idle_exit_s > 0:
                tasks.append(asyncio.create_task(self._idle_watch()))
            self.front.touch()
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self.router.close()

        return build_app(self.front, lifespan)

    async def _idle_watch(self) -> None:
        limit = self.serving.idle_exit_s
        while True:
            await asyncio.sleep(min(IDLE_CHECK_S, limit))
            quiet = time.monotonic() - self.front.last_request
            if quiet >= limit and self.front.active == 0 and self._server is not None:
                self.idle_exited = True
                self._server.should_exit = True
                return

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.serving.host else socket.AF_INET
        # IPPROTO_TCP named, so asyncio sets TCP_NODELAY on each connection (else a response
        # written in two parts waits for the client's delayed ACK: 40 ms a request)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.serving.host, self.serving.port))
        return sock

    async def serve(self, sock: socket.socket, on_ready: Callable[[Ready], None]) -> None:
        """Serve on ``sock`` until stopped (or idle); ``on_ready`` once the models are loaded.
        A version that cannot be loaded at start is raised: nothing serves."""
        try:
            await self.router.start()
        except BaseException:
            await self.router.close()
            sock.close()
            raise
        config = uvicorn.Config(
            self.app(), log_level="warning", lifespan="on", access_log=False, timeout_notify=30
        )
        self._server = server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            port = sock.getsockname()[1]
            host = self.serving.host if ":" not in self.serving.host else f"[{self.serving.host}]"
            on_ready(Ready(f"http://{host}:{port}", port, self.router.health()))
        await task
        if not server.started and task.done() and not self.idle_exited:
            raise RuntimeError("the service did not start: its log says why")

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True


class Running:
    """A service serving in a thread of this process until ``stop``; ``url`` once ready."""

    def __init__(self, service: PredictionService, timeout: float = 120.0) -> None:
        self.service = service
        self._ready = threading.Event()
        self.ready: Ready | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="prediction-service")
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the prediction service was not ready in {timeout} s")
        if self.ready is None:
            raise RuntimeError(f"the prediction service did not start: {self.error}")

    @property
    def url(self) -> str:
        assert self.ready is not None
        return self.ready.url

    def _run(self) -> None:
        def ready(info: Ready) -> None:
            self.ready = info
            self._ready.set()

        try:
            asyncio.run(self.service.serve(self.service.bind(), ready))
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def stop(self, timeout: float = 60.0) -> None:
        self.service.stop()
        self._thread.join(timeout)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def running(service: PredictionService) -> Iterator[Running]:
    with Running(service) as run:
        yield run

"""DevHost: wire each registered function to its local source, then poll and serve.

    with DevHost(Path("function_app.py"), home=Path(".ephemerid")) as host:
        print(host.wiring)
        host.run()  # until Ctrl-C

The host sets the app settings (``EPHEMERID_HOME`` and what it is given) in the environment for
as long as it runs, and the functions build their services from them through the app's own
factory, as in Azure. ``poll`` makes one pass over the bucket, the queues and the clock; HTTP
requests are served on their own threads meanwhile. One dev host per process is the usual
case: two share the app's cached services, and each hears every job change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func

from ephemerid.devhost import keys
from ephemerid.devhost.blobs import BlobSource, blob_stream
from ephemerid.devhost.environment import function_app_settings
from ephemerid.devhost.eventgrid import StorageEvent
from ephemerid.devhost.functions import (
    APP_FILE,
    HostedFunction,
    ephemerid_app,
    load_app,
    read_functions,
)
from ephemerid.devhost.timers import Clock
from ephemerid.devhost.web import WEBHOOK_PATH, DevServer, Route
from ephemerid.devhost.wiring import WIRES, HostContext, Source, Wire, host_options, not_run
from ephemerid.errors import BadInput
from ephemerid.functions import APP_SETTING_DEFAULTS, handlers_from_settings
from ephemerid.functions.callers import KEYS_FILE_SETTING
from ephemerid.record import JobRecord, utcnow
from ephemerid.service import Service

log = logging.getLogger("ephemerid.devhost")
DEFAULT_PORT = 7071


@dataclass(frozen=True)
class Invocation:
    function: str
    detail: str
    ok: bool
    error: str
    seconds: float


class DevHost:
    def __init__(
        self,
        app: func.FunctionRegister | Path | None = None,
        *,
        home: Path,
        settings: Mapping[str, str | None] | None = None,
        port: int | None = DEFAULT_PORT,
        clock: Clock = utcnow,
        interval: float = 0.5,
        timers: bool = True,
        on_job: Callable[[JobRecord], None] | None = None,
        on_invocation: Callable[[Invocation], None] | None = None,
        handlers: Callable[[], Any] = handlers_from_settings,
    ) -> None:
        """``app``: a FunctionApp, or the path of ``function_app.py`` (or of its folder);
        by default ``./function_app.py``, or ephemerid's own app where there is none.
        ``port``: 0 picks a free one; None serves no HTTP. ``handlers``: the app's factory."""
        self.home = home.resolve()
        self.app_source = app
        self.settings = {
            "EPHEMERID_HOME": str(self.home),
            KEYS_FILE_SETTING: str(self.home / keys.KEYS_FILE),  # who called: functions/callers
            **(settings or {}),
        }
        self.port = port
        self.clock = clock
        self.interval = interval
        self.timers = timers
        self.on_job = on_job
        self.on_invocation = on_invocation
        self._handlers = handlers
        self._unsubscribe: Callable[[], None] | None = None
        self._subscribed: Service | None = None
        self._lock = threading.Lock()
        self._touched = threading.local()
        self._stack = contextlib.ExitStack()
        self._sources: list[Source] = []
        self._blobs: dict[str, BlobSource] = {}
        self.functions: list[HostedFunction] = []
        self.wiring: list[Wire] = []
        self.invocations: list[Invocation] = []
        self.server: DevServer | None = None
        self.key = ""
        self.running = False

    # -- life ------------------------------------------------------------------------------------

    def __enter__(self) -> DevHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        forget = getattr(self._handlers, "cache_clear", lambda: None)
        self._stack.enter_context(function_app_settings(self.settings, forget))
        try:
            app, app_dir = self._load()
            self.functions = read_functions(app, os.environ, APP_SETTING_DEFAULTS)
            self._hook()  # build the services now: a bad rules file or setting shows at start
            self.wiring = self._wire(host_options(app_dir))
        except BaseException:
            self.close()
            raise
        self.running = True

    def close(self) -> None:
        self.running = False
        if self.server is not None:
            self.server.close()
            self.server = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = self._subscribed = None
        info = getattr(self._handlers, "cache_info", None)
        if info is not None and info().currsize:
            self._handlers().service.close()
        self._stack.close()

    @property
    def service(self) -> Service:
        """The service the functions use (built from the settings on first use)."""
        return self._hook()

    @property
    def url(self) -> str:
        return self.server.url if self.server else ""

    # -- events ----------------------------------------------------------------------------------

    def poll(self) -> int:
        """One pass over every polled source; returns how many events were handled."""
        handled = 0
        for source in self._sources:
            try:
                handled += source.poll()
            except Exception as exc:  # an unreachable queue service, say: try again next pass
                log.warning("%s: %s", source.describe(), exc)
        return handled

    def run(self, until: Callable[[], bool] | None = None, timeout: float | None = None) -> bool:
        """Poll every ``interval`` until ``until()`` is true (True) or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.poll()
            if until is not None and until():
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(self.interval)

    def invoke(self, function: HostedFunction, value: object, detail: str) -> object:
        """Call the user function; record and log the outcome; re-raise what it raised."""
        self._hook()
        started = time.monotonic()
        try:
            result = function(value)
        except Exception as exc:
            log.warning("%s(%s) failed: %s", function.name, detail, exc, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"
            self._record(Invocation(function.name, detail, False, error, self._since(started)))
            raise
        self._record(Invocation(function.name, detail, True, "", self._since(started)))
        return result

    def deliver_event(self, function: HostedFunction, event: StorageEvent) -> dict[str, str]:
        """An Event Grid BlobCreated event for ``function``, as the host's blob extension does."""
        pattern = self._blobs[function.name].pattern
        if pattern.match(event.key) is None:
            return {"skipped": f"{event.key} does not match {pattern.path}"}
        artifacts = self.service.artifacts
        try:
            stat = artifacts.stat(event.key)
        except BadInput:  # a name that escapes its prefix: the function refuses and records it
            props = {"ETag": event.etag}
            value = func.blob.InputStream(data=b"", name=event.key, blob_properties=props)
            self.invoke(function, value, event.key)
            return {"delivered": event.key}
        if stat is None:
            return {"skipped": f"{event.key} is not in the bucket"}
        touched: set[str] = set()  # the jobs this thread's invocation creates or changes
        self._touched.jobs = touched
        try:
            self.invoke(function, blob_stream(artifacts, stat), event.key)
        finally:
            self._touched.jobs = None
        if not touched:
            why = "it made no new job (delivered before, matched no rule, or refused: eph rejected)"
            return {"duplicate": event.key, "detail": why}
        return {"delivered": event.key}

    @staticmethod
    def _since(started: float) -> float:
        return round(time.monotonic() - started, 4)

    def _record(self, invocation: Invocation) -> None:
        with self._lock:
            self.invocations.append(invocation)
            del self.invocations[:-1000]
        if self.on_invocation:
            self.on_invocation(invocation)

    def _hook(self) -> Service:
        """The functions' service, with this host subscribed to its job changes."""
        service: Service = self._handlers().service
        if self._subscribed is not service:  # first use, or the app built a new one
            if self._unsubscribe is not None:
                self._unsubscribe()
            self._unsubscribe = service.subscribe(self._job_changed)
            self._subscribed = service
        return service

    def _job_changed(self, job: JobRecord) -> None:
        touched = getattr(self._touched, "jobs", None)
        if touched is not None:
            touched.add(job.id)
        if self.on_job:
            self.on_job(job)

    # -- wiring ----------------------------------------------------------------------------------

    def _load(self) -> tuple[func.FunctionRegister, Path | None]:
        source = self.app_source
        if isinstance(source, func.FunctionRegister):
            return source, None
        path = source if source is not None else Path.cwd() / APP_FILE
        if source is None and not path.exists():
            log.info("no %s here: running ephemerid's own functions", APP_FILE)
            return ephemerid_app(), None
        return load_app(path), (path if path.is_dir() else path.parent)

    def _wire(self, options: Mapping[str, Any]) -> list[Wire]:
        context = HostContext(
            self.home, self.service.artifacts, self.invoke, self.clock, self.timers, os.environ
        )
        wires: dict[str, Wire] = {}
        http: list[HostedFunction] = []
        for function in self.functions:
            if function.unsupported:
                needs = ", ".join(function.unsupported)
                wire, source = not_run(function, f"needs {needs} bindings the dev host lacks")
            elif function.trigger == "httpTrigger":
                http.append(function)
                continue
            elif function.trigger in WIRES:
                wire, source = WIRES[function.trigger](context, function, options)
            else:
                wire, source = not_run(function, "the dev host has no source for this trigger")
            wires[function.name] = wire
            if source is not None:
                self._sources.append(source)
            if isinstance(source, BlobSource):
                self._blobs[function.name] = source
        wires.update(self._serve(http))
        return [wires[f.name] for f in self.functions]

    def _serve(self, http: list[HostedFunction]) -> dict[str, Wire]:
        """Start the HTTP server for the HTTP functions and the blob triggers' webhook."""
        webhooks = {
            name: blob.function
            for name, blob in self._blobs.items()
            if str(blob.function.binding.get("source", "")).lower() == "eventgrid"
        }
        if self.port is None:
            return {f.name: not_run(f, "HTTP is off")[0] for f in http}
        self.key = keys.load_or_create(self.home)
        routes = [Route.of(f) for f in http]
        self.server = DevServer(
            self.port,
            routes,
            webhooks,
            self.key,
            self.invoke,
            self.deliver_event,
            keys.ring(self.home),
        )
        self.server.start()
        wires = {}
        for route in routes:
            auth = "anonymous" if route.anonymous else "function key"
            detail = f"{','.join(sorted(route.methods))} {self.url}/api/{route.template} ({auth})"
            wires[route.function.name] = Wire(route.function.name, "httpTrigger", "http", detail)
        for name in webhooks:
            hook = f"{self.url}{WEBHOOK_PATH}?functionName=Host.Functions.{name}"
            detail = f"{self._blobs[name].describe()}; Event Grid: POST {hook}"
            wires[name] = Wire(name, "blobTrigger", "bucket", detail)
        return wires

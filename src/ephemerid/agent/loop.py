"""The agent's loop: the Functions host's work for one home, on this machine.

Each event goes where the function app sends it, through the same ``Intake``:

- ``runs/<job>/result.json`` written: ``Intake.blob``, which completes the job (the result is
  recorded, the compute released, the model registered, waiting jobs dispatched into the slot);
- a blob in ``incoming/``: ``Intake.blob`` too, once it has stopped changing (a file still being
  copied is not picked up half-written), which submits what the rules make of it;
- a schedule's time, to its second: ``Intake.tick``, keyed by the rule and the time, so a
  restart or a second agent never fires one twice; times before this agent started are not
  replayed (the function app's catch-up of a missed minute is for a host that was running);
- every ``agent_poll_s``: the reaper (``reaper.reap``: results an event missed, lost heartbeats,
  runtimes, strays, waiting jobs) and a listing of ``incoming/``, the safety net under the watch.

A local bucket is watched with ``watchfiles`` (inotify); another one (Azurite) is only polled.
The loop ends on ``stop()`` or once nothing has been open for ``agent_idle_s`` (no open job,
no schedule, no blob settling).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypeVar

from ephemerid import names
from ephemerid.app import build_service
from ephemerid.artifacts import Stat
from ephemerid.errors import EphemeridError, NotFound
from ephemerid.intake import Intake
from ephemerid.reaper import reap
from ephemerid.record import utcnow
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings

log = logging.getLogger("ephemerid.agent")
SETTLE_S = 0.3  # an incoming blob is delivered once unchanged for this long
_STOP = ""  # wakes the loop to stop
T = TypeVar("T")


def rules_of(settings: Settings) -> Rules:
    """The rules file the settings name; none (no rules) when it is absent or cannot be read:
    results, waiting jobs and the reaper need no rules, and the reason goes to the log."""
    path = settings.rules_path
    if not path.exists():
        return Rules.parse("", base=path.resolve().parent, source=str(path))
    try:
        return Rules.load(path)
    except EphemeridError as exc:
        log.error("rules not loaded, no rule runs until the agent restarts: %s", exc)
        return Rules.parse("", base=path.resolve().parent, source=str(path))


class Agent:
    def __init__(
        self,
        settings: Settings,
        *,
        rules: Rules | None = None,
        clock: Callable[[], datetime] = utcnow,
        home_gone: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.home_gone = home_gone  # its home removed: it must never reap a new home's compute
        self.rules = rules if rules is not None else rules_of(settings)
        self.clock = clock
        self.started_at = clock()
        self._events: queue.Queue[str] = queue.Queue()
        self._stopping = threading.Event()
        self._settling: dict[str, tuple[str, float]] = {}  # incoming key -> (etag, seen at)
        self._seen: dict[str, str] = {}  # incoming key -> the etag delivered
        self.fired: list[str] = []  # job ids the schedules made (for `eph agent` to print)

    def stop(self) -> None:
        self._stopping.set()
        self._events.put(_STOP)

    def run(self) -> None:
        """Until ``stop()`` or idle. Builds its own service, and closes it."""
        service = build_service(self.settings)
        watcher = None
        try:
            intake = Intake(service, self.rules, self.settings.jobs_queue)
            root = _bucket_folder(service)
            if root is not None:
                watcher = threading.Thread(
                    target=_watch, args=(root, self._events.put, self._stopping), daemon=True
                )
                watcher.start()
            self._loop(service, intake)
        finally:
            self._stopping.set()
            if watcher is not None:
                watcher.join(timeout=5)
            service.close()

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self, service: Service, intake: Intake) -> None:
        poll_s, idle_s = self.settings.agent_poll_s, self.settings.agent_idle_s
        next_pass = time.monotonic()  # a first pass at once: what came while none ran
        busy_at = time.monotonic()
        next_fire = self._next_fire(self.started_at)
        while not self._stopping.is_set():
            now_m = time.monotonic()
            if now_m >= next_pass:
                if self.home_gone():
                    log.warning("%s was removed or taken over: the agent exits", self.settings.home)
                    return
                self._pass(service, intake)
                next_pass = now_m + poll_s
            now = self.clock()
            if next_fire is not None and now >= next_fire:
                self._fire(intake, now)
                next_fire = self._next_fire(now)
            self._deliver_settled(intake)
            if service.list_open() or next_fire is not None or self._settling:
                busy_at = time.monotonic()
            elif time.monotonic() - busy_at > idle_s:
                log.info("nothing open for %.0fs: the agent exits", idle_s)
                return
            self._wait(service, intake, self._timeout(next_pass, next_fire, busy_at + idle_s))

    def _timeout(self, next_pass: float, next_fire: datetime | None, idle_at: float) -> float:
        now_m = time.monotonic()
        waits = [next_pass - now_m, idle_at - now_m + 0.01]
        if next_fire is not None:
            waits.append((next_fire - self.clock()).total_seconds())
        if self._settling:
            waits.append(SETTLE_S / 2)
        return max(min(waits), 0.0)

    def _wait(self, service: Service, intake: Intake, timeout: float) -> None:
        """Wait for bucket events up to ``timeout``; handle each that came."""
        try:
            keys = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return
        while True:
            try:
                keys.append(self._events.get_nowait())
            except queue.Empty:
                break
        for key in dict.fromkeys(keys):
            if key != _STOP:
                self._event(service, intake, key)

    # -- the steps -------------------------------------------------------------------------------

    def _event(self, service: Service, intake: Intake, key: str) -> None:
        if names.job_of_result(key):
            _guarded(f"result {key}", lambda: intake.blob(key, None))
        elif key.endswith(f"/{names.METRICS_FILE}"):  # a sweep's trial logged: prune it?
            _guarded(f"metrics {key}", lambda: _trial_logged(service, key))
        elif key.startswith(f"{names.INCOMING}/"):
            stat = _guarded(f"blob {key}", lambda: service.artifacts.stat(key))
            if stat is not None:
                self._settle(stat)

    def _settle(self, stat: Stat) -> None:
        if self._seen.get(stat.key) == stat.etag:
            return
        known = self._settling.get(stat.key)
        if known is None or known[0] != stat.etag:
            self._settling[stat.key] = (stat.etag, time.monotonic())

    def _deliver_settled(self, intake: Intake) -> None:
        now_m = time.monotonic()
        for key, (etag, seen_at) in list(self._settling.items()):
            if now_m - seen_at < SETTLE_S:
                continue
            del self._settling[key]
            _guarded(f"blob {key}", partial(self._deliver, intake, key, etag))

    def _deliver(self, intake: Intake, key: str, etag: str) -> None:
        stat = intake.service.artifacts.stat(key)
        if stat is None:
            return
        if stat.etag != etag:  # still changing: watch it settle again
            self._settle(stat)
            return
        self._seen[key] = etag
        intake.blob(key, etag)

    def _pass(self, service: Service, intake: Intake) -> None:
        """The slow pass: the reaper, and the incoming blobs a watch may have missed."""
        for action in _guarded("reaper", lambda: reap(service)) or []:
            log.info("reaper: %s", action)
        for stat in _guarded("incoming", lambda: list(service.artifacts.list("incoming/"))) or []:
            self._settle(stat)

    def _next_fire(self, after: datetime) -> datetime | None:
        times = [when for _, when in self.rules.next_times(after)]
        return min(times) if times else None

    def _fire(self, intake: Intake, now: datetime) -> None:
        since = max(now - self.started_at, timedelta(seconds=1))
        for submitted in _guarded("schedules", lambda: intake.tick(now, catch_up=since)) or []:
            if submitted.created:
                log.info("schedule fired: job %s (%s)", submitted.job.id, submitted.job.source)
                self.fired.append(submitted.job.id)


def _guarded(what: str, step: Callable[[], T]) -> T | None:
    """``step()``; what goes wrong in it is logged, and the loop goes on (the next pass retries)."""
    try:
        return step()
    except Exception:
        log.exception("agent: %s failed; tried again on the next pass", what)
        return None


def _trial_logged(service: Service, key: str) -> None:
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != names.RUNS:
        return
    try:
        job = service.get(parts[1])
    except NotFound:
        return
    if job.parent and not job.state.terminal and service.prunes(job.parent):
        service.advance_sweep(job.parent)


def _bucket_folder(service: Service) -> Path | None:
    uri = service.artifacts.root_uri
    return Path(uri.removeprefix("file://")) if uri.startswith("file://") else None


def _watch(root: Path, put: Callable[[str], None], stopping: threading.Event) -> None:
    """Put the key of each result and incoming blob written under ``root`` until ``stopping``."""
    try:
        import watchfiles
    except ImportError:  # the slow pass still finds everything
        log.warning("watchfiles is missing: the agent polls every EPHEMERID_AGENT_POLL_S")
        return
    wanted_names = (names.RESULT_FILE, names.METRICS_FILE)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # not a line per change

    def wanted(change: watchfiles.Change, path: str) -> bool:
        name = Path(path).name
        if change is watchfiles.Change.deleted or name.startswith("."):
            return False
        return name in wanted_names or f"/{names.INCOMING}/" in path

    try:
        for changes in watchfiles.watch(
            root,
            watch_filter=wanted,
            debounce=200,
            step=20,
            stop_event=stopping,
            rust_timeout=1000,
            yield_on_timeout=False,
            raise_interrupt=False,
        ):
            for _, path in sorted(changes):
                try:
                    put(Path(path).relative_to(root).as_posix())
                except ValueError:
                    continue
    except Exception:  # inotify limits, a folder gone: the slow pass still finds everything
        log.exception("watching %s stopped; the agent polls every EPHEMERID_AGENT_POLL_S", root)

"""Following a job while it runs: what `eph submit` and `eph logs -f` show at each tick.

``Follow`` reads what grew since the last tick (the log, the metrics, the record) and hands it to
a view:

- ``TextView``: the log on stdout as it grows, and a status line on stderr (state, elapsed time
  of the user's code, latest metrics). On a terminal it is a live line under the log; elsewhere a
  plain ``status:`` line, printed when the state changes or a metric first appears, at most every
  ``STATUS_EVERY_S`` when only values change, and once more at the end.
- ``JsonLines`` (``eph logs -f --json``): one JSON object per line on stdout, in this order:
  ``log`` chunks and ``metric`` values as they come, a ``state`` object at each change of state,
  and a last ``end`` object with the end state.
"""

from __future__ import annotations

import codecs
import json
import sys
import time
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ephemerid.reads import Progress, reported_start
from ephemerid.record import JobRecord
from ephemerid.service import Service
from ephemerid.track import Latest, Metric

STATUS_EVERY_S = 10.0  # off a terminal: how often a status line may repeat for new values only
METRICS_SHOWN = 4


class View(Protocol):
    def show(self, job: JobRecord, progress: Progress, log: str, metrics: list[Metric]) -> None:
        """What grew since the last tick, and the job now."""

    def end(self, job: JobRecord, progress: Progress) -> None:
        """The job has settled: the last of it."""

    def close(self) -> None: ...


class Follow:
    """Reads a job's log and metrics as they grow, and shows them through ``view``."""

    def __init__(self, service: Service, job: JobRecord, view: View) -> None:
        self.service, self.job_id, self.view = service, job.id, view
        self.started = job.started_at
        self.latest = Latest()
        self._log_at = self._metrics_at = 0
        self._text = codecs.getincrementaldecoder("utf-8")("replace")  # a split character waits

    def tick(self) -> None:
        job = self.service.get(self.job_id)
        self._show(job)

    def end(self, job: JobRecord) -> None:
        """Show the rest of the log and metrics, then the end."""
        self._show(job)
        self.view.end(job, self._progress(job))

    def close(self) -> None:
        self.view.close()

    def _show(self, job: JobRecord) -> None:
        log = self.service.read_log(self.job_id, self._log_at)
        self._log_at += len(log)
        grown = self.service.read_metrics(self.job_id, self._metrics_at)
        self._metrics_at += len(grown)
        self.view.show(job, self._progress(job), self._text.decode(log), self.latest.feed(grown))

    def _progress(self, job: JobRecord) -> Progress:
        if job.started_at is not None:
            self.started = job.started_at
        elif self.started is None and job.live_at is not None:  # read the beat until it says
            self.started = reported_start(job, self.service.heartbeat(self.job_id))
        return Progress(self.started, None, dict(self.latest.metrics))


def status_line(job: JobRecord, progress: Progress) -> str:
    """``RUNNING  12.3s  loss=0.25 (step 3)  accuracy=0.9``: state, elapsed, latest metrics."""
    elapsed = progress.elapsed_s(job)
    parts = [job.state.value, "not started" if elapsed is None else f"{elapsed:.1f}s"]
    newest = sorted(progress.metrics.values(), key=lambda m: m.at or 0.0, reverse=True)
    for metric in sorted(newest[:METRICS_SHOWN], key=lambda m: m.name):
        step = "" if metric.step is None else f" (step {metric.step})"
        parts.append(f"{metric.name}={metric.value:g}{step}")
    if len(newest) > METRICS_SHOWN:
        parts.append(f"+{len(newest) - METRICS_SHOWN} more")
    return "  ".join(parts)


class TextView:
    """The log on stdout, and the status line on ``console`` (live on a terminal)."""

    def __init__(self, console: Console, show_logs: bool = True) -> None:
        self.console, self.show_logs = console, show_logs
        self._shown: tuple[str, tuple[Any, ...]] = ("", ())  # the state and metrics last printed
        self._line, self._printed_at = "", 0.0
        self.live: Live | None = None
        if console.is_terminal and not console.is_dumb_terminal:
            # stdout on the same terminal: the log goes above the line, through the live display
            redirect = sys.stdout.isatty()
            self.live = Live(
                console=console,
                transient=True,
                auto_refresh=False,
                redirect_stdout=redirect,
                redirect_stderr=False,
            )
            self.live.start()

    def show(self, job: JobRecord, progress: Progress, log: str, metrics: list[Metric]) -> None:
        if log and self.show_logs:
            sys.stdout.write(log)
            sys.stdout.flush()
        line = status_line(job, progress)
        if self.live is not None:
            self.live.update(Text(line, style="bold"), refresh=True)
            return
        state, values = self._shown
        now = tuple((m.name, m.value, m.step) for _, m in sorted(progress.metrics.items()))
        news = job.state.value != state or {n for n, *_ in now} - {n for n, *_ in values}
        due = now != values and time.monotonic() - self._printed_at >= STATUS_EVERY_S
        if news or due:
            self._print(line, job.state.value, now)

    def end(self, job: JobRecord, progress: Progress) -> None:
        self.close()
        line = status_line(job, progress)
        if line != self._line:
            self._print(line, job.state.value, ())

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _print(self, line: str, state: str, values: tuple[Any, ...]) -> None:
        self.console.print(f"status: {line}", markup=False, highlight=False, soft_wrap=True)
        self._shown, self._line, self._printed_at = (state, values), line, time.monotonic()


class JsonLines:
    """One JSON object per line on ``out``: log, metric, state, and a last end."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self._state: tuple[str, str] | None = None

    def show(self, job: JobRecord, progress: Progress, log: str, metrics: list[Metric]) -> None:
        if log:
            self._emit({"type": "log", "job": job.id, "text": log})
        for metric in metrics:
            self._emit({"type": "metric", "job": job.id, "name": metric.name, **metric.to_json()})
        if self._state != (job.state.value, job.compute_state.value):
            self._state = (job.state.value, job.compute_state.value)
            self._emit({"type": "state", **_state_of(job, progress)})

    def end(self, job: JobRecord, progress: Progress) -> None:
        data = job.to_json()
        metrics = {n: m.value for n, m in sorted(progress.metrics.items())} or job.metrics
        end = {"type": "end", **_state_of(job, progress), "exit_code": job.exit_code}
        end.update(finished_at=data["finished_at"], runtime_s=job.runtime_s, held_s=job.held_s)
        self._emit({**end, "metrics": metrics})

    def close(self) -> None:
        pass

    def _emit(self, data: dict[str, Any]) -> None:
        self.out.write(json.dumps(data, default=str) + "\n")
        self.out.flush()


def _state_of(job: JobRecord, progress: Progress) -> dict[str, Any]:
    started = progress.started_at.isoformat() if progress.started_at else None
    return {
        "job": job.id,
        "state": job.state.value,
        "compute_state": job.compute_state.value,
        "reason": job.reason,
        "started_at": started,
        "elapsed_s": progress.elapsed_s(job),
    }

"""Timer triggers fed from a local clock reading the binding's 6-field NCRONTAB schedule.

Like the Functions host, a timer fires once per due time; occurrences missed while the dev host
was busy or asleep are not replayed one by one: the next invocation says ``past_due``. The clock
is injectable, so tests (and two dev hosts) can share one fake time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

from azure.functions.timer import TimerRequest
from croniter import croniter

from ephemerid.devhost.functions import HostedFunction
from ephemerid.errors import BadInput

Clock = Callable[[], datetime]
Invoke = Callable[[HostedFunction, object, str], object]
PAST_DUE = timedelta(seconds=5)  # later than this after its due time, a tick is past due


class TimerSource:
    def __init__(self, function: HostedFunction, clock: Clock, invoke: Invoke) -> None:
        self.function = function
        self.clock = clock
        self.invoke = invoke
        self.schedule = str(function.binding["schedule"])
        if len(self.schedule.split()) != 6 or not croniter.is_valid(
            self.schedule, second_at_beginning=True
        ):
            raise BadInput(
                f"function '{function.name}': schedule '{self.schedule}' is not a 6-field "
                "NCRONTAB expression (second minute hour day month weekday)"
            )
        self.last: datetime | None = None
        self._on_startup = bool(function.binding.get("runOnStartup"))
        self.next = self._after(clock())

    def describe(self) -> str:
        return f"clock '{self.schedule}' (next {self.next.isoformat(timespec='seconds')})"

    def poll(self) -> int:
        now = self.clock()
        if self._on_startup:
            self._on_startup = False
            self._fire(now, past_due=False)
            return 1
        if now < self.next:
            return 0
        due, self.next = self.next, self._after(now)
        self._fire(due, past_due=now - due > PAST_DUE)
        return 1

    def _fire(self, due: datetime, past_due: bool) -> None:
        status = {
            "Last": self.last.isoformat() if self.last else None,
            "Next": self.next.isoformat(),
        }
        self.last = due
        request = TimerRequest(
            past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True}
        )
        with contextlib.suppress(Exception):  # logged by invoke; a timer is not retried
            self.invoke(self.function, request, f"due {due.isoformat(timespec='seconds')}")

    def _after(self, moment: datetime) -> datetime:
        return croniter(self.schedule, moment, second_at_beginning=True).get_next(datetime)

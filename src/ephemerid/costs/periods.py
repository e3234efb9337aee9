"""Times a cost report or a budget is about: ``7d``-style durations, dates, and periods."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ephemerid.errors import BadInput

PERIODS = ("day", "month")
_DURATION = re.compile(r"^(?P<n>\d+(\.\d+)?)\s*(?P<unit>[smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
FORMAT = "a duration back from now (30m, 12h, 7d, 2w) or a date (2026-12-01, 2026-12-01T08:00Z)"


def parse_time(text: str, now: datetime, flag: str = "--since") -> datetime:
    """``text`` as a moment: a duration before ``now``, or an ISO date or time (UTC if no zone)."""
    value = text.strip()
    found = _DURATION.match(value.lower())
    if found:
        return now - timedelta(seconds=float(found["n"]) * _UNITS[found["unit"]])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadInput(f"{flag}: '{text}' is not a time: write {FORMAT}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def window(
    since: str | None, until: str | None, now: datetime, default_since: str = "7d"
) -> tuple[datetime, datetime]:
    """The [since, until) a report covers; BadInput when it is empty or backwards."""
    end = parse_time(until, now, "--until") if until else now
    start = parse_time(since or default_since, now, "--since")
    if start >= end:
        raise BadInput(
            f"--since {start:%Y-%m-%dT%H:%M:%SZ} is not before --until {end:%Y-%m-%dT%H:%M:%SZ}: "
            "pick a since earlier than the until"
        )
    return start, end


def period_start(period: str, now: datetime) -> datetime:
    """The start of the calendar ``period`` (day or month, UTC) that holds ``now``."""
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def period_end(period: str, now: datetime) -> datetime:
    """The end of the calendar ``period`` that holds ``now`` (the next one's start)."""
    start = period_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def days(since: datetime, until: datetime) -> list[tuple[datetime, datetime]]:
    """The UTC days that [since, until) touches, each cut to the window."""
    found = []
    start = period_start("day", since)
    while start < until:
        end = start + timedelta(days=1)
        found.append((max(start, since), min(end, until)))
        start = end
    return found

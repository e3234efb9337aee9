"""The cost page's query and what it shows: ``eph cost``'s report, read through the service and
counting only the jobs the caller sees.

Kept beside ``views`` (the other pages' reads) so that module stays short. The page's query names
the same things as the CLI's flags (``since``, ``until``, ``by``, ``vs``, ``spot``); a malformed one
is BadInput naming the field, and the report's own BadInput (a window backwards, an unknown SKU
with the close names) is told with the page's field names instead of the flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from ephemerid.costs import CostReport, report_from
from ephemerid.errors import BadInput
from ephemerid.functions.callers import Caller
from ephemerid.service import Service
from ephemerid.ui.views import PageQuery

_TIME = r"^[0-9A-Za-z:.+ -]{1,40}$"  # 7d, 12h, 2026-12-01, 2026-12-01T08:00Z
_SKU = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# the report's errors name the CLI's flags; on the page they are these query fields
_FIELDS = {"--vs-persistent": "vs", "--since": "since", "--until": "until", "--by": "by"}
_FIELDS_AFTER = {"drop --spot": "drop spot"}
USE = (
    "use since=7d (30m, 12h, 2w or a date), until=, by=rule|sweep|owner|backend|day, vs=SKU, spot=1"
)


class CostQuery(PageQuery):
    """The cost page's query."""

    WHAT: ClassVar[str] = "cost query"
    USE: ClassVar[str] = USE

    since: str = Field(default="7d", pattern=_TIME)
    until: str | None = Field(default=None, pattern=_TIME)
    by: Literal["rule", "sweep", "owner", "backend", "day"] | None = None
    vs: str | None = Field(default=None, pattern=_SKU)
    spot: bool = False


@dataclass(frozen=True)
class CostPage:
    wanted: CostQuery
    report: CostReport
    skus: tuple[str, ...]  # the price table's SKUs: what ``vs`` may name

    @property
    def daily(self) -> list[dict[str, Any]]:
        """[{date, cost_usd, persistent_usd?}, ...]: the chart's points."""
        return self.report.daily_json()


def cost_page(service: Service, caller: Caller, wanted: CostQuery) -> CostPage:
    """The report over the jobs ``caller`` sees (its own; all for an admin)."""
    records = [job for job in service.list() if caller.sees(job.owner)]
    try:
        found = report_from(
            records,
            since=wanted.since,
            until=wanted.until,
            by=wanted.by,
            vs_persistent=wanted.vs,
            spot=wanted.spot,
            prices=service.prices,
        )
    except BadInput as exc:
        raise BadInput(_in_fields(str(exc))) from exc
    return CostPage(wanted, found, tuple(service.prices.skus))


def _in_fields(message: str) -> str:
    for flag, name in {**_FIELDS_AFTER, **_FIELDS}.items():
        message = message.replace(flag, name)
    return message

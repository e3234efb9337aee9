"""What jobs cost: one job's bill (``bill``), reports over a period (``report``), the price a
job will pay at submit and the cap ``compute.max_cost`` puts on it (``limits``)."""

from __future__ import annotations

from ephemerid.costs.bill import JobBill, bill, rule_of
from ephemerid.costs.report import GROUPINGS, CostReport, Line, Persistent, report, report_from

__all__ = [
    "GROUPINGS",
    "CostReport",
    "JobBill",
    "Line",
    "Persistent",
    "bill",
    "report",
    "report_from",
    "rule_of",
]

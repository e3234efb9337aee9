"""What a job can cost at most, known at submit, and ``compute.max_cost``'s answer to it.

The most an hour of a job's compute can cost is read before anything is rented: local compute
at ``EPHEMERID_LOCAL_PRICE_PER_HOUR``; azure-vm at the dearest of the SKUs it may get (its
``skus``, else the default SKU; on-demand unless ``spot: only``, since ``prefer`` may fall back
to on-demand); azure-ml at the cluster's node SKU times its nodes. The job's worst case is that
price times its ``max_runtime`` plus the setup allowance (``EPHEMERID_SETUP_ALLOWANCE_S``: boot,
setup and the billed idle around the run).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ephemerid.compute.prices import PriceTable
from ephemerid.errors import SpecError
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec, Spot


@dataclass(frozen=True)
class Price:
    per_hour: float | None  # None: the price table does not know what the job would rent
    source: str  # where it comes from, for the messages


def price_of(spec: JobSpec, backend: str, settings: Settings, prices: PriceTable) -> Price:
    """The most an hour of ``spec``'s compute on ``backend`` can cost."""
    compute = spec.compute
    if backend == "azure-ml" and settings.azure_ml is not None:
        aml = settings.azure_ml
        rate = prices.per_hour(aml.node_sku, aml.low_priority)
        each = f"{aml.node_sku} {'low priority' if aml.low_priority else 'dedicated'}"
        if rate is None:
            return Price(None, each)
        return Price(rate * compute.nodes, f"{compute.nodes} x {each} at ${rate}/h")
    if backend == "azure-vm" and settings.azure_vm is not None:
        skus = compute.skus or [settings.azure_vm.default_sku]
        spot = compute.spot is Spot.ONLY
        rates = {sku: prices.per_hour(sku, spot) for sku in skus}
        unknown = [sku for sku, rate in rates.items() if rate is None]
        if unknown:
            return Price(None, ", ".join(unknown))
        sku, rate = max(rates.items(), key=lambda item: item[1] or 0.0)
        return Price(rate, f"{sku} {'spot' if spot else 'on demand'} at ${rate}/h")
    rate = settings.local_price_per_hour
    return Price(rate, f"local compute at ${rate}/h (EPHEMERID_LOCAL_PRICE_PER_HOUR)")


def worst_cost(spec: JobSpec, price: Price, allowance_s: float) -> float | None:
    """The most ``spec`` can cost at ``price``: max_runtime plus the setup allowance."""
    if price.per_hour is None:
        return None
    return price.per_hour * (spec.compute.max_runtime + allowance_s) / 3600


@dataclass(frozen=True)
class CostLimit:
    """What ``compute.max_cost`` decided at submit, kept on the job's record."""

    max_cost: float
    price_per_hour: float
    allowance_s: float
    asked_runtime_s: float
    max_runtime_s: float  # what the job runs with: capped below asked_runtime_s, or the same

    @property
    def capped(self) -> bool:
        return self.max_runtime_s < self.asked_runtime_s

    def note(self) -> str:
        if not self.capped:
            return f"within max_cost ${self.max_cost:g}"
        return (
            f"max_runtime capped from {self.asked_runtime_s:g}s to {self.max_runtime_s:g}s to stay "
            f"within max_cost ${self.max_cost:g} at ${self.price_per_hour:g}/h "
            f"(setup allowance {self.allowance_s:g}s)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_cost": self.max_cost,
            "price_per_hour": self.price_per_hour,
            "allowance_s": self.allowance_s,
            "asked_runtime_s": self.asked_runtime_s,
            "max_runtime_s": self.max_runtime_s,
            "capped": self.capped,
            "note": self.note(),
        }


def fit(spec: JobSpec, price: Price, allowance_s: float) -> tuple[JobSpec, CostLimit | None]:
    """``spec`` within its ``max_cost``: unchanged, or with ``max_runtime`` capped (``on_max_cost:
    cap``); SpecError with the numbers when it could cost more and may not be capped."""
    compute = spec.compute
    if compute.max_cost is None:
        return spec, None
    if price.per_hour is None:
        raise SpecError(
            f"compute.max_cost: the price of {price.source} is not in the price table, so the "
            "job's cost cannot be bounded: add it to your table (EPHEMERID_PRICE_TABLE), or drop "
            "max_cost"
        )
    asked = compute.max_runtime
    limit = CostLimit(compute.max_cost, price.per_hour, allowance_s, asked, asked)
    worst = worst_cost(spec, price, allowance_s) or 0.0
    if worst <= compute.max_cost:
        return spec, limit
    fits = math.floor(compute.max_cost / price.per_hour * 3600 - allowance_s)
    if compute.on_max_cost == "cap" and fits >= 1:
        capped = compute.model_copy(update={"max_runtime": fits})
        limit = CostLimit(compute.max_cost, price.per_hour, allowance_s, asked, float(fits))
        return spec.model_copy(update={"compute": capped}), limit
    fix = (
        f"raise max_cost, lower compute.max_runtime to at most {fits}s, or set "
        "compute.on_max_cost: cap"
        if fits >= 1
        else "raise max_cost: the setup allowance alone would pass it"
    )
    raise SpecError(
        f"compute.max_cost: the job could cost ${worst:.4f} ({price.source} x (max_runtime "
        f"{asked:g}s + setup allowance {allowance_s:g}s)), more than its max_cost "
        f"${compute.max_cost:g}: {fix}"
    )

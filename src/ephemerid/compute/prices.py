"""What compute costs per hour: a small table shipped with the package, overridable.

``prices.json`` holds approximate list prices per SKU (USD per hour, on-demand and spot). A job
records the price when its compute goes live, so its cost does not change if the table does.
``EPHEMERID_PRICE_TABLE`` points at a JSON file of the same shape with your own rates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ephemerid.errors import BadInput


@dataclass(frozen=True)
class PriceTable:
    skus: dict[str, dict[str, float]]
    currency: str = "USD"

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The shipped table, or the one at ``path``; BadInput naming the file if it is wrong."""
        try:
            if path is None:
                text = resources.files("ephemerid.compute").joinpath("prices.json").read_text()
            else:
                text = path.read_text(encoding="utf-8")
            data: Any = json.loads(text)
            skus = {
                str(sku): {k: float(v) for k, v in rates.items() if k in ("on_demand", "spot")}
                for sku, rates in data["skus"].items()
            }
            bad = [f"{s}.{k}={v}" for s, r in skus.items() for k, v in r.items() if not v >= 0]
            if bad or any(math.isinf(v) for r in skus.values() for v in r.values()):
                raise ValueError(f"a price must be a number, 0 or more: {', '.join(bad) or 'inf'}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadInput(
                f"price table '{path or 'prices.json'}' is not valid: write "
                '{"skus": {"<sku>": {"on_demand": 1.0, "spot": 0.2}}} ({exc})'
            ) from exc
        return cls(skus, str(data.get("currency", "USD")))

    def per_hour(self, sku: str, spot: bool) -> float | None:
        """The hourly price of ``sku`` (spot or on-demand), None if the table does not know it."""
        rates = self.skus.get(sku) or {k.lower(): v for k, v in self.skus.items()}.get(sku.lower())
        return (rates or {}).get("spot" if spot else "on_demand")

"""Price catalogue, cost model and break-even.

Python API (used by serve/, the pipeline report and the cascade):
- `offramp.cost.prices.load_catalogue([user.yaml])` → `.api_price(name)`, `.host_price(name)`
- `offramp.cost.model`: `api_cost`, `capacity_from_point`, `self_hosted_cost`; `Hosting` (the keyword arguments
  `self_hosted_cost` and `break_even` share: deployment, utilisations, spares, billing unit, fixed costs)
- `offramp.cost.breakeven`: `break_even`, `payback_months`, `cascade_cost`
- `offramp.traffic.workload`: the workload measured from captured traffic (`offramp breakeven --traffic`)
- `offramp.cost.report.analyse(Inputs(...))` → the body of breakeven_report.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def catalogue_host_price(host: str, pricing: str = "on_demand", prices: list[Path] | None = None) -> dict[str, Any]:
    """A host's hourly list price with its provenance: {value, unit, source, date, reference, verified}."""
    from offramp.cost.prices import load_catalogue
    from offramp.reports import list_price

    entry = load_catalogue(prices).host_price(host)
    return {**list_price(entry.per_hour(pricing), "USD/hour", entry.date, entry.source), "verified": entry.verified}

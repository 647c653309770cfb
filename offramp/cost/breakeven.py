"""Break-even volume, payback, sensitivity, and the cascade (local model first, API for the escalated share)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from offramp.cost.model import (
    HOURS_PER_MONTH,
    SECONDS_PER_MONTH,
    ApiCost,
    Capacity,
    Hosting,
    SelfHostedCost,
    _AsDict,
    api_cost,
    self_hosted_cost,
)
from offramp.cost.prices import ApiPrice
from offramp.cost.workload import Workload
from offramp.errors import OfframpError


@dataclass(frozen=True)
class BreakEven(_AsDict):
    volume: float | None  # requests/month from which self-hosting is first at least as cheap; None: never
    stays_cheaper_from: float | None  # from here on it never loses again (adding a replica can lose briefly)
    api_cheaper_always: bool
    utilisation_needed: float | None  # busy share of paid host hours at which the host matches the API per token
    reason: str


def _step_crossing(a: float, h: float, m: float, f: float, b: int = 1, s: int = 0) -> tuple[float, float] | None:
    """Where cost ≤ a·V first holds, and from where it holds for good.

    Cost: j·b·h + f for j instances of b units (h $/month per unit) while the needed replicas k = ceil(V / m)
    plus s spares fit in them: k + s ≤ j·b, i.e. V ≤ (j·b − s)·m. Within one j the API's cost rises and ours
    stands still, so it holds somewhere in j iff it holds at the end: j·b·(a·m − h) ≥ f + s·a·m. Just after a
    step the next instance may lose again; the start of j + 1 holds iff j·b·(a·m − h) ≥ f + s·a·m + b·h.
    """
    margin = a * m - h  # what one fully loaded replica saves per month
    need = f + s * a * m
    if margin < 0 or (margin == 0 and need > 0):
        return None

    def lower(j: int) -> float:
        return max(((j - 1) * b - s) * m, 0.0)

    def crossing_in(j: int) -> float:
        return max((j * b * h + f) / a, lower(j))

    j_min = math.ceil((1 + s) / b)
    if margin == 0:
        return crossing_in(j_min), crossing_in(j_min)
    j = max(j_min, math.ceil(need / (b * margin) - 1e-12))
    j_stable = max(j, math.ceil((need + b * h) / (b * margin) - 1e-12))
    return crossing_in(j), crossing_in(j_stable)


def break_even(
    w: Workload,
    api: ApiCost,
    cap: Capacity,
    price_per_hour: float,
    *,
    escalation_share: float = 0.0,
    local_sees_every_request: bool = True,
    **hosting: Any,
) -> BreakEven:
    """Monthly volume where self-hosted (host + amortised one-offs + operations) costs no more than the API.

    Always-on: each replica costs 730·price and carries `m` requests/month at the target utilisation of its
    SLO-meeting load and the peak-to-average ratio, so the cost is a step function (spares and the unit the host
    is sold in included); scale-to-zero also pays busy hours / autoscale utilisation when that is less, unless
    the price is committed (reserved). With `escalation_share` e (a cascade) the API still answers e of the
    requests; the local model sees every request (or only the kept 1 − e when `local_sees_every_request` is
    False). `hosting`: the fields of `Hosting`, as for `self_hosted_cost`.
    """
    if not 0 <= escalation_share <= 1:
        raise OfframpError(f"escalation share must be in [0, 1], got {escalation_share}")
    hs = Hosting(**hosting)
    unit = hs.billing_unit
    k = 1.0 if local_sees_every_request else 1 - escalation_share  # local volume per request
    if k <= 0:
        return BreakEven(None, None, True, None, "every request is escalated: nothing is served locally")
    a = api.per_request_usd * (1 - escalation_share) / k  # API spend saved per locally served request
    full_load = price_per_hour * cap.seconds_per_request(w) / 3600  # host cost per request, every paid hour busy
    if a <= 0:
        return BreakEven(None, None, True, None, "nothing to save: the API costs nothing for the requests kept local")
    needed = full_load / a
    fixed = hs.one_off_monthly + hs.operations_monthly
    h = price_per_hour * HOURS_PER_MONTH
    m = cap.requests_per_s(w) * hs.target_utilisation * SECONDS_PER_MONTH / w.peak_to_average
    crossings = [_step_crossing(a, h, m, fixed, unit, hs.spare_replicas)]
    scaling = hs.scales_to_zero
    if scaling:  # paid hours = min(replicas × 730, busy / utilisation × unit): the linear part
        per_request = full_load / hs.autoscale_utilisation * unit
        if a > per_request or (a == per_request and fixed == 0):
            linear = fixed / (a - per_request) if a > per_request else 0.0
            crossings.append((linear, linear))
    found = [c for c in crossings if c is not None]
    if not found:
        why = (
            f"one replica costs ${h:,.2f}/month and carries at most {m:,.0f} requests/month at "
            f"{hs.target_utilisation:.0%} of its SLO load and peak/average {w.peak_to_average:g}; the API charges "
            f"${a * m:,.2f} for those"
        )
        if scaling:
            why += f"; scale-to-zero at {hs.autoscale_utilisation:.0%} utilisation costs ${per_request:.3g}/request"
        if fixed > 0 and a * m >= h:
            why += f", which never recovers the fixed ${fixed:,.2f}/month (one-offs amortised + operations)"
        return BreakEven(None, None, True, needed, f"the API is cheaper at every volume: {why}")
    volume, stable = min(c[0] for c in found) / k, min(c[1] for c in found) / k
    reason = (
        f"self-hosting is cheaper from {volume:,.0f} requests/month"
        if volume > 0
        else "self-hosting is cheaper at every volume"
    )
    if stable > volume:
        reason += f" and stays cheaper from {stable:,.0f} (just after adding a replica the API can win again)"
    return BreakEven(volume, stable, False, needed, reason)


def payback_months(one_off_total: float, api_monthly: float, host_monthly: float) -> float | None:
    """Months of saving (API − host, at this volume) that repay the one-off costs; None: never."""
    saving = api_monthly - host_monthly
    if saving <= 0:
        return None
    return one_off_total / saving


def utilisation_sensitivity(w: Workload, api: ApiCost, cap: Capacity, price_per_hour: float) -> list[dict]:
    """Self-hosted $ per 1M tokens of this mix if the paid hours were busy at u, against the API's price."""
    per_1m_full = price_per_hour * cap.seconds_per_request(w) / 3600 / (w.input_tokens + w.output_tokens) * 1e6
    rows = []
    for u in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
        cost = per_1m_full / u
        rows.append({"utilisation": u, "self_hosted_per_1m_usd": cost, "api_per_1m_usd": api.per_1m_tokens_usd})
    return rows


def price_cut_sensitivity(
    w: Workload, price: ApiPrice, cap: Capacity, price_per_hour: float, one_off_total: float, **kw
) -> list[dict]:
    """Break-even volume, saving and payback if the API's prices were cut by 0–75 %."""
    rows = []
    for cut in (0.0, 0.25, 0.5, 0.75):
        cheaper = price.model_copy(
            update={
                "input_per_1m": price.input_per_1m * (1 - cut),
                "output_per_1m": price.output_per_1m * (1 - cut),
                "cached_input_per_1m": None
                if price.cached_input_per_1m is None
                else price.cached_input_per_1m * (1 - cut),
            }
        )
        api = api_cost(w, cheaper)
        be = break_even(w, api, cap, price_per_hour, **kw)
        host = self_hosted_cost(w, cap, price_per_hour, **kw)
        rows.append(
            {
                "api_price_cut": cut,
                "api_monthly_usd": api.monthly_usd,
                "self_hosted_monthly_usd": host.monthly_usd,
                "break_even_requests_per_month": be.volume,
                "payback_months": payback_months(
                    one_off_total, api.monthly_usd, host.monthly_usd - host.one_off_monthly_usd
                ),
            }
        )
    return rows


@dataclass(frozen=True)
class CascadeCost(_AsDict):
    escalation_share: float
    local: SelfHostedCost
    escalated: ApiCost
    monthly_usd: float
    per_1k_requests_usd: float | None


def cascade_cost(
    w: Workload,
    price: ApiPrice,
    cap: Capacity,
    price_per_hour: float,
    escalation_share: float,
    *,
    local_sees_every_request: bool = True,
    **kw,
) -> CascadeCost:
    """Local model for every request (or for the kept share only), the API for the escalated share."""
    if not 0 <= escalation_share <= 1:
        raise OfframpError(f"escalation share must be in [0, 1], got {escalation_share}")
    r = w.requests_per_month
    local_volume = r if local_sees_every_request else r * (1 - escalation_share)
    local = self_hosted_cost(w.with_volume(local_volume), cap, price_per_hour, **kw)
    escalated = api_cost(w.with_volume(r * escalation_share), price)
    monthly = local.monthly_usd + escalated.monthly_usd
    return CascadeCost(escalation_share, local, escalated, monthly, monthly / r * 1000 if r > 0 else None)

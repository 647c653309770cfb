"""The cost arithmetic: API cost of a workload, self-hosted cost from a measured load point, break-even.

Conventions: a month is 730 hours (365 × 24 / 12); prices are USD; token prices are per 1M tokens.
Everything here is pure arithmetic on the inputs, so the pipeline report and the cascade call it directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from offramp.artifacts import LoadPoint
from offramp.cost.prices import ApiPrice
from offramp.cost.workload import Workload
from offramp.errors import OfframpError

HOURS_PER_MONTH = 730.0
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
DEPLOYMENTS = ("always-on", "scale-to-zero")
Deployment = Literal["always-on", "scale-to-zero"]


class _AsDict:
    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class ApiCost(_AsDict):
    mode: Literal["realtime", "batch"]
    input_per_1m: float  # the prices actually paid in that mode
    cached_input_per_1m: float
    output_per_1m: float
    per_request_usd: float
    monthly_usd: float
    monthly_input_usd: float
    monthly_cached_input_usd: float
    monthly_output_usd: float
    per_1m_tokens_usd: float  # blended over input + output tokens of this workload


def _api_option(w: Workload, p: ApiPrice, batch: bool) -> ApiCost:
    factor = 1 - p.batch_discount if batch else 1.0
    cached = p.input_per_1m if p.cached_input_per_1m is None else p.cached_input_per_1m
    if batch:  # a batch either discounts cache hits too, or bills them as (discounted) uncached input
        cached = cached * factor if p.batch_applies_to_cached else p.input_per_1m * factor
    inp, out = p.input_per_1m * factor, p.output_per_1m * factor
    per_in = w.input_tokens * (1 - w.cached_input_share) * inp / 1e6
    per_cached = w.input_tokens * w.cached_input_share * cached / 1e6
    per_out = w.output_tokens * out / 1e6
    per_request = per_in + per_cached + per_out
    r = w.requests_per_month
    return ApiCost(
        mode="batch" if batch else "realtime",
        input_per_1m=inp,
        cached_input_per_1m=cached,
        output_per_1m=out,
        per_request_usd=per_request,
        monthly_usd=per_request * r,
        monthly_input_usd=per_in * r,
        monthly_cached_input_usd=per_cached * r,
        monthly_output_usd=per_out * r,
        per_1m_tokens_usd=per_request / (w.input_tokens + w.output_tokens) * 1e6,
    )


def api_cost(w: Workload, p: ApiPrice) -> ApiCost:
    """The cheapest way to buy the workload from the API: realtime with prompt caching, or batch if tolerated."""
    options = [_api_option(w, p, batch=False)]
    if w.batch_tolerant and p.batch_discount > 0:
        options.append(_api_option(w, p, batch=True))
    return min(options, key=lambda o: o.per_request_usd)


@dataclass(frozen=True)
class Capacity(_AsDict):
    """What one replica sustains at the SLO, as host-seconds per input and per output token."""

    seconds_per_input_token: float
    seconds_per_output_token: float
    input_time_share: float  # share of host time charged to input tokens at the measured load
    rule: str  # how host time is split between input and output tokens, in words

    def seconds_per_request(self, w: Workload) -> float:
        return w.input_tokens * self.seconds_per_input_token + w.output_tokens * self.seconds_per_output_token

    def requests_per_s(self, w: Workload) -> float:
        return 1.0 / self.seconds_per_request(w)

    def input_cost_share(self, w: Workload) -> float:
        return w.input_tokens * self.seconds_per_input_token / self.seconds_per_request(w)


def capacity_from_point(point: LoadPoint, output_weight: float | None = None) -> Capacity:
    """Host time per token at a measured load point.

    Rule (default): the host's time is split between input and output tokens as a request's measured time
    splits before and after its first token: mean TTFT / mean end-to-end latency (the bench's `e2el_ms` when
    it has one, else TTFT + TPOT × (output tokens − 1)). TTFT includes any queueing. With `output_weight` K
    instead: one output token costs as much host time as K input tokens.
    """
    tin, tout = point.input_tokens_per_s, point.output_tokens_per_s
    if point.completed <= 0 or tin <= 0 or tout <= 0:
        raise OfframpError("the sustainable load point has no completed requests or no token throughput")
    if output_weight is not None:
        if output_weight <= 0:
            raise OfframpError(f"output weight must be > 0, got {output_weight}")
        share = tin / (tin + output_weight * tout)
        rule = f"stated ratio: one output token costs the host time of {output_weight:g} input tokens"
    else:
        decode_tokens = max(point.output_tokens / point.completed - 1, 0)
        ttft, tpot = point.ttft_ms.get("mean"), point.tpot_ms.get("mean")
        e2el = (getattr(point, "e2el_ms", None) or {}).get("mean")
        if e2el is None and ttft is not None and tpot is not None:
            e2el = ttft + tpot * decode_tokens
        if ttft is None or not e2el or e2el <= 0:
            raise OfframpError("the load point lacks mean TTFT / TPOT to split host time; pass an output weight")
        share = min(ttft / e2el, 1.0)
        rule = (
            f"measured time split: input tokens carry the share of a request's time before its first token "
            f"(mean TTFT {ttft:.1f} ms / mean end-to-end {e2el:.1f} ms, queueing included) = {share:.1%}; "
            "output tokens the rest"
        )
    return Capacity(share / tin, (1 - share) / tout, share, rule)


@dataclass(frozen=True)
class SelfHostedCost(_AsDict):
    deployment: str
    price_per_hour: float
    capacity_rps: float  # workload requests/s one replica sustains at the SLO
    peak_rps: float
    replicas: int
    busy_hours: float  # host-hours of work if every paid hour ran at the sustainable load
    paid_hours: float
    utilisation: float | None  # busy / paid
    host_monthly_usd: float
    one_off_monthly_usd: float
    monthly_usd: float  # host + amortised one-off costs
    input_cost_share: float
    per_request_usd: float | None  # host cost only, at the achieved utilisation
    per_1m_input_usd: float | None
    per_1m_output_usd: float | None
    floor_per_1m_input_usd: float  # fully utilised: every paid hour busy
    floor_per_1m_output_usd: float


def self_hosted_cost(
    w: Workload,
    cap: Capacity,
    price_per_hour: float,
    *,
    deployment: Deployment = "always-on",
    autoscale_utilisation: float = 0.7,
    one_off_monthly: float = 0.0,
) -> SelfHostedCost:
    """Replicas to carry the peak at the SLO; paid hours always-on, or busy hours / autoscale utilisation."""
    if deployment not in DEPLOYMENTS:
        raise OfframpError(f"unknown deployment {deployment!r}; use {' or '.join(DEPLOYMENTS)}")
    if not 0 < autoscale_utilisation <= 1:
        raise OfframpError(f"autoscale utilisation must be in (0, 1], got {autoscale_utilisation}")
    r = w.requests_per_month
    cap_rps = cap.requests_per_s(w)
    peak_rps = r / SECONDS_PER_MONTH * w.peak_to_average
    # the tolerance keeps float noise (2.0000000001) from buying a third replica; any traffic still needs one
    replicas = max(1, math.ceil(peak_rps / cap_rps - 1e-9)) if r > 0 else 0
    busy = r * cap.seconds_per_request(w) / 3600
    paid = replicas * HOURS_PER_MONTH
    if deployment == "scale-to-zero":
        paid = min(paid, busy / autoscale_utilisation)
    host = paid * price_per_hour
    share = cap.input_cost_share(w)
    per_sec = price_per_hour / 3600
    return SelfHostedCost(
        deployment=deployment,
        price_per_hour=price_per_hour,
        capacity_rps=cap_rps,
        peak_rps=peak_rps,
        replicas=replicas,
        busy_hours=busy,
        paid_hours=paid,
        utilisation=busy / paid if paid > 0 else None,
        host_monthly_usd=host,
        one_off_monthly_usd=one_off_monthly,
        monthly_usd=host + one_off_monthly,
        input_cost_share=share,
        per_request_usd=host / r if r > 0 else None,
        per_1m_input_usd=host * share / (r * w.input_tokens) * 1e6 if r > 0 else None,
        per_1m_output_usd=host * (1 - share) / (r * w.output_tokens) * 1e6 if r > 0 else None,
        floor_per_1m_input_usd=per_sec * cap.seconds_per_input_token * 1e6,
        floor_per_1m_output_usd=per_sec * cap.seconds_per_output_token * 1e6,
    )

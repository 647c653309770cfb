"""The cost arithmetic: API cost of a workload, self-hosted cost from a measured load point, break-even.

Conventions: a month is 730 hours (365 × 24 / 12); prices are USD; token prices are per 1M tokens.
Everything here is pure arithmetic on the inputs, so the pipeline report and the cascade call it directly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from offramp.artifacts import LoadPoint
from offramp.cost.prices import ApiPrice
from offramp.cost.workload import Workload
from offramp.errors import OfframpError

HOURS_PER_MONTH = 730.0
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
DEPLOYMENTS = ("always-on", "scale-to-zero")
TARGET_UTILISATION = 0.7  # replicas are sized so the peak uses at most this share of the SLO-meeting load
Deployment = Literal["always-on", "scale-to-zero"]


class _AsDict:
    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class ApiCost(_AsDict):
    mode: Literal["realtime", "batch"]
    input_per_1m: float  # the prices actually paid in that mode
    cached_input_per_1m: float
    cache_write_per_1m: float
    output_per_1m: float
    input_tokens: float  # what one API request carries (its own prompt, not the small model's)
    billed_output_tokens: float  # the answer plus any hidden reasoning tokens
    cached_share_billed: float  # share of input billed as cache reads (0 where the cache cannot apply)
    cache_write_share_billed: float
    cache_note: str
    cache_break_even_hit_rate: float | None  # hit rate from which caching beats no caching (writes cost extra)
    per_request_usd: float
    monthly_usd: float
    monthly_input_usd: float
    monthly_cached_input_usd: float
    monthly_cache_write_usd: float
    monthly_output_usd: float
    per_1m_tokens_usd: float  # blended over input + billed output tokens of this workload


def _cache_shares(w: Workload, p: ApiPrice, tokens: float) -> tuple[float, float, str]:
    """(read share, write share, why) of the API's input billed at prompt-cache prices."""
    s = w.cached_input_share
    if s == 0:
        return 0.0, 0.0, "no prompt-cache hits in this workload"
    if p.cached_input_per_1m is None:
        return 0.0, 0.0, "the vendor lists no prompt-cache price: cached input pays the input price"
    minimum = p.cache_min_prompt_tokens or 0
    if tokens < minimum:
        return (
            0.0,
            0.0,
            (
                f"no cache discount: the mean prompt ({tokens:,.0f} tokens) is below the {minimum:,} tokens "
                "the vendor caches at least"
            ),
        )
    if p.cache_write_per_1m is None:
        return s, 0.0, f"{s:.0%} of input billed at the cache-read price (writes cost the input price)"
    if w.cache_write_share is None:
        write, assumed = 1 - s, " (assumed: every input token not read from the cache is written to it)"
    else:
        write, assumed = w.cache_write_share, ""
    return s, write, f"{s:.0%} of input billed as cache reads, {write:.0%} as cache writes{assumed}"


def _break_even_hit_rate(inp: float, read: float, write: float) -> float | None:
    """Hit rate h from which h·read + (1 − h)·write ≤ input: caching only pays above it."""
    if write <= inp:
        return 0.0
    return (write - inp) / (write - read) if write > read else None


def _api_option(w: Workload, p: ApiPrice, batch: bool) -> ApiCost:
    factor = 1 - p.batch_discount if batch else 1.0
    cached = p.input_per_1m if p.cached_input_per_1m is None else p.cached_input_per_1m
    write = p.input_per_1m if p.cache_write_per_1m is None else p.cache_write_per_1m
    if batch:  # a batch either discounts cache reads and writes too, or bills them as (discounted) uncached input
        cached, write = (cached, write) if p.batch_applies_to_cached else (p.input_per_1m, p.input_per_1m)
        cached, write = cached * factor, write * factor
    inp, out = p.input_per_1m * factor, p.output_per_1m * factor
    tokens = w.api_input_tokens or w.input_tokens
    s, wr, note = _cache_shares(w, p, tokens)
    if s and s * cached + wr * write > (s + wr) * inp:  # caching loses: a team would not turn it on
        note = f"caching costs more than it saves here ({note}), so it is priced off"
        s, wr = 0.0, 0.0
    per_in = tokens * (1 - s - wr) * inp / 1e6
    per_cached = tokens * s * cached / 1e6
    per_write = tokens * wr * write / 1e6
    billed_out = w.output_tokens + w.reasoning_tokens
    per_out = billed_out * out / 1e6
    per_request = per_in + per_cached + per_write + per_out
    r = w.requests_per_month
    return ApiCost(
        mode="batch" if batch else "realtime",
        input_per_1m=inp,
        cached_input_per_1m=cached,
        cache_write_per_1m=write,
        output_per_1m=out,
        input_tokens=tokens,
        billed_output_tokens=billed_out,
        cached_share_billed=s,
        cache_write_share_billed=wr,
        cache_note=note,
        cache_break_even_hit_rate=_break_even_hit_rate(inp, cached, write),
        per_request_usd=per_request,
        monthly_usd=per_request * r,
        monthly_input_usd=per_in * r,
        monthly_cached_input_usd=per_cached * r,
        monthly_cache_write_usd=per_write * r,
        monthly_output_usd=per_out * r,
        per_1m_tokens_usd=per_request / (tokens + billed_out) * 1e6,
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


CLASSIFIER_RULE = (
    "a classifier (vLLM's pooling runner) answers in one forward pass and generates no tokens: all host time goes "
    "to input tokens, and a request costs its input tokens only"
)


def generates_nothing(point: LoadPoint) -> bool:
    """A classifier's load (vLLM's pooling runner): requests completed and not one token generated."""
    return point.completed > 0 and point.output_tokens == 0


def capacity_from_point(
    point: LoadPoint, output_weight: float | None = None, *, prefill_point: LoadPoint | None = None
) -> Capacity:
    """Host time per token at a measured load point.

    Rules, first that applies:
    - a point with no output tokens at all (a classifier's /pooling load): every host second is input;
    - `output_weight` K: one output token costs as much host time as K input tokens (stated by the user);
    - fitted (a `prefill_point`, the sweep's lowest load): prefill seconds per input token from its mean TTFT,
      where requests barely queue; at the sustainable point the host is busy all the time, so decode gets the
      rest: (1 − input tokens/s × prefill s/token) / output tokens/s;
    - measured split: the share of a request's time before its first token (mean TTFT / mean end-to-end, TTFT
      queueing included) is charged to input tokens.
    """
    tin, tout = point.input_tokens_per_s, point.output_tokens_per_s
    if output_weight is not None and output_weight <= 0:  # checked for a classifier's point too
        raise OfframpError(f"output weight must be > 0, got {output_weight}")
    if generates_nothing(point) and tin > 0:
        return Capacity(1.0 / tin, 0.0, 1.0, CLASSIFIER_RULE)
    if point.completed <= 0 or tin <= 0 or tout <= 0:
        raise OfframpError("the sustainable load point has no completed requests or no token throughput")
    if output_weight is not None:
        share = tin / (tin + output_weight * tout)
        rule = f"stated ratio: one output token costs the host time of {output_weight:g} input tokens"
        return Capacity(share / tin, (1 - share) / tout, share, rule)
    fitted = _fitted_split(point, prefill_point)
    if fitted is not None:
        return fitted
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


def _fitted_split(point: LoadPoint, low: LoadPoint | None) -> Capacity | None:
    """Prefill rate from the lowest load's TTFT, decode from what is left of the busy host at `point`."""
    if low is None or low.completed <= 0 or low.input_tokens <= 0:
        return None
    ttft = low.ttft_ms.get("mean")
    if not ttft:
        return None
    per_input = ttft / 1000 / (low.input_tokens / low.completed)
    share = point.input_tokens_per_s * per_input
    if not 0 < share < 0.95:  # prefill alone would fill the host: the fit does not describe this sweep
        return None
    where = f"concurrency {low.concurrency}" if low.concurrency is not None else f"rate {low.request_rate}"
    rule = (
        f"fitted from the sweep: prefill {1 / per_input:,.0f} input tokens/s (mean TTFT {ttft:.1f} ms at {where}, "
        f"{low.input_tokens / low.completed:,.0f} tokens/request); decode takes the rest of the busy host at the "
        f"sustainable point ({1 - share:.1%} of its time)"
    )
    return Capacity(per_input, (1 - share) / point.output_tokens_per_s, share, rule)


def bench_range_warnings(w: Workload, points: list[LoadPoint], factor: float = 2.0) -> list[str]:
    """Where the workload's token mix lies outside what the bench measured (capacity is then extrapolated)."""
    done = [p for p in points if p.completed > 0]
    if not done:
        return []
    warnings = []
    measured = [("input", w.input_tokens), ("output", w.output_tokens)]
    if all(generates_nothing(p) for p in done):  # a classifier: its capacity does not depend on output tokens
        measured = measured[:1]
    for what, mine in measured:
        per_request = [getattr(p, f"{what}_tokens") / p.completed for p in done]
        lo, hi = min(per_request), max(per_request)
        if mine > hi * factor or mine < lo / factor:
            warnings.append(
                f"the workload's {mine:,.0f} {what} tokens/request lie outside what the bench measured "
                f"({lo:,.0f}–{hi:,.0f}): capacity is extrapolated from per-token rates; bench with prompts like "
                "the workload's (offramp bench --workload FILE, or --traffic STORE) before trusting it"
            )
    return warnings


@dataclass(frozen=True)
class SelfHostedCost(_AsDict):
    deployment: str
    price_per_hour: float
    capacity_rps: float  # workload requests/s one replica sustains at the SLO
    target_utilisation: float  # share of that capacity the peak may use (headroom for bursts)
    peak_rps: float
    needed_replicas: int  # to carry the peak at the target utilisation
    spare_replicas: int  # N+1: kept beside them
    replicas: int  # billed: needed + spare, rounded up to the unit the host is sold in
    busy_hours: float  # host-hours of work if every paid hour ran at the sustainable load
    paid_hours: float
    utilisation: float | None  # busy / paid
    host_monthly_usd: float
    one_off_monthly_usd: float
    operations_monthly_usd: float
    monthly_usd: float  # host + amortised one-off costs + operations
    input_cost_share: float
    per_request_usd: float | None  # host cost only, at the achieved utilisation
    per_1m_input_usd: float | None
    per_1m_output_usd: float | None
    floor_per_1m_input_usd: float  # fully utilised: every paid hour busy
    floor_per_1m_output_usd: float


@dataclass(frozen=True)
class Hosting:
    """How the self-hosted side is run and paid: the keyword arguments of `self_hosted_cost` and `break_even`."""

    deployment: Deployment = "always-on"
    autoscale_utilisation: float = 0.7  # busy share of paid hours when scaling to zero
    target_utilisation: float = TARGET_UTILISATION
    spare_replicas: int = 0
    billing_unit: int = 1  # the host is sold in multiples of this many replicas
    committed: bool = False  # a reserved price: every hour is paid, busy or not
    one_off_monthly: float = 0.0
    operations_monthly: float = 0.0

    def __post_init__(self) -> None:
        if self.deployment not in DEPLOYMENTS:
            raise OfframpError(f"unknown deployment {self.deployment!r}; use {' or '.join(DEPLOYMENTS)}")
        if not 0 < self.autoscale_utilisation <= 1:
            raise OfframpError(f"autoscale utilisation must be in (0, 1], got {self.autoscale_utilisation}")
        if not 0 < self.target_utilisation <= 1:
            raise OfframpError(f"target utilisation must be in (0, 1], got {self.target_utilisation}")

    @property
    def scales_to_zero(self) -> bool:
        """Paid by busy hours (scale-to-zero on an uncommitted price), not by replicas × 730 h."""
        return self.deployment == "scale-to-zero" and not self.committed


def self_hosted_cost(w: Workload, cap: Capacity, price_per_hour: float, **hosting: Any) -> SelfHostedCost:
    """Replicas to carry the peak at the target utilisation (+ spares), rounded up to the unit the host is sold
    in. Paid: every hour of every replica (always-on, or any committed/reserved price), or with scale-to-zero
    busy hours / autoscale utilisation when that is less (an instance sold whole is paid whole while up).
    `hosting`: the fields of `Hosting`."""
    h = Hosting(**hosting)
    deployment, target_utilisation, billing_unit = h.deployment, h.target_utilisation, h.billing_unit
    r = w.requests_per_month
    cap_rps = cap.requests_per_s(w)
    peak_rps = r / SECONDS_PER_MONTH * w.peak_to_average
    # the tolerance keeps float noise (2.0000000001) from buying a third replica; any traffic still needs one
    needed = max(1, math.ceil(peak_rps / (cap_rps * target_utilisation) - 1e-9)) if r > 0 else 0
    spare = h.spare_replicas if r > 0 else 0
    replicas = math.ceil((needed + spare) / billing_unit) * billing_unit
    busy = r * cap.seconds_per_request(w) / 3600
    paid = replicas * HOURS_PER_MONTH
    if h.scales_to_zero:
        paid = min(paid, busy / h.autoscale_utilisation * billing_unit)
    host = paid * price_per_hour
    share = cap.input_cost_share(w)
    per_sec = price_per_hour / 3600
    return SelfHostedCost(
        deployment=deployment,
        price_per_hour=price_per_hour,
        capacity_rps=cap_rps,
        target_utilisation=target_utilisation,
        peak_rps=peak_rps,
        needed_replicas=needed,
        spare_replicas=spare,
        replicas=replicas,
        busy_hours=busy,
        paid_hours=paid,
        utilisation=busy / paid if paid > 0 else None,
        host_monthly_usd=host,
        one_off_monthly_usd=h.one_off_monthly,
        operations_monthly_usd=h.operations_monthly,
        monthly_usd=host + h.one_off_monthly + h.operations_monthly,
        input_cost_share=share,
        per_request_usd=host / r if r > 0 else None,
        per_1m_input_usd=host * share / (r * w.input_tokens) * 1e6 if r > 0 else None,
        # a classifier (share 1) generates nothing: the API's output tokens cost the host nothing, so no figure
        per_1m_output_usd=host * (1 - share) / (r * w.output_tokens) * 1e6 if r > 0 and share < 1 else None,
        floor_per_1m_input_usd=per_sec * cap.seconds_per_input_token * 1e6,
        floor_per_1m_output_usd=per_sec * cap.seconds_per_output_token * 1e6,
    )

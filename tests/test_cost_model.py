"""The cost arithmetic on hand-computed cases: the arithmetic is written out beside each expected number."""

from __future__ import annotations

import pytest

from offramp.artifacts import LoadPoint
from offramp.cost.breakeven import break_even, cascade_cost, payback_months
from offramp.cost.model import SECONDS_PER_MONTH, api_cost, capacity_from_point, self_hosted_cost
from offramp.cost.prices import ApiPrice
from offramp.cost.workload import Workload
from offramp.errors import OfframpError

approx = pytest.approx


def point(**kw) -> LoadPoint:
    """48 requests of 256 in / 64 out in 60 s: 0.8 req/s, 204.8 in tok/s, 51.2 out tok/s."""
    base = dict(
        concurrency=1, completed=48, failed=0, duration_s=60.0, requests_per_s=0.8,
        input_tokens=48 * 256, output_tokens=48 * 64, input_tokens_per_s=204.8, output_tokens_per_s=51.2,
        ttft_ms={"mean": 200.0, "p50": 190.0, "p99": 400.0}, tpot_ms={"mean": 15.0, "p50": 15.0, "p99": 20.0},
        itl_ms={"mean": 15.0}, meets_slo=True,
    )  # fmt: skip
    return LoadPoint(**{**base, **kw})


def price(scale: float = 1.0, **kw) -> ApiPrice:
    base = dict(
        input_per_1m=1.0 * scale, cached_input_per_1m=0.25 * scale, output_per_1m=4.0 * scale,
        batch_discount=0.5, batch_applies_to_cached=False, date="2025-06", source="https://example.test/pricing",
    )  # fmt: skip
    return ApiPrice(**{**base, **kw})


# One request per second on average: SECONDS_PER_MONTH = 730 h × 3600 s = 2,628,000.
R = 2_628_000


def workload(**kw) -> Workload:
    return Workload(**{"requests_per_month": R, "input_tokens": 200, "output_tokens": 20, **kw})


# The hand-computed cases size replicas at 100 % of the SLO-meeting load; the default headroom is tested apart.
FULL = {"target_utilisation": 1.0}


def ten_to_one():
    # tin 1000, tout 100 tok/s and "1 output token = 10 input tokens": input share = 1000 / (1000 + 10·100) = 0.5
    # → 0.5 / 1000 = 0.0005 host-s per input token, 0.5 / 100 = 0.005 host-s per output token.
    p = point(input_tokens_per_s=1000.0, output_tokens_per_s=100.0)
    return capacity_from_point(p, output_weight=10)


def test_month_has_730_hours():
    assert SECONDS_PER_MONTH == 730 * 3600 == R


def test_api_cost_blends_cached_and_uncached_input():
    # per request: 200·0.6 uncached × $1 + 200·0.4 cached × $0.25 + 20 out × $4, per 1M
    #            = 120e-6 + 20e-6 + 80e-6 = 220e-6 USD
    cost = api_cost(workload(cached_input_share=0.4), price())
    assert cost.mode == "realtime"
    assert cost.per_request_usd == approx(220e-6)
    assert cost.monthly_usd == approx(220e-6 * R)  # 578.16
    assert cost.monthly_cached_input_usd == approx(20e-6 * R)
    assert cost.per_1m_tokens_usd == approx(220e-6 / 220 * 1e6)  # $1.00 per 1M blended tokens


def test_batch_discount_used_only_when_tolerated_and_cheaper():
    w = workload(cached_input_share=0.4, batch_tolerant=True)
    # batch, cache hits not discounted further: (120 + 80)·0.5 in + 80·0.5 out = 60e-6 + 40e-6 + 40e-6 = 140e-6
    assert api_cost(w, price()).mode == "batch"
    assert api_cost(w, price()).per_request_usd == approx(140e-6)
    # stacking: cached 200·0.4 × 0.125 = 10e-6 → 60e-6 + 10e-6 + 40e-6 = 110e-6
    assert api_cost(w, price(batch_applies_to_cached=True)).per_request_usd == approx(110e-6)
    # all input cached, 1 output token: realtime 1000 × $0.1 + 1 × $4 = 104e-6 beats batch 1000 × $0.5 + 1 × $2 = 502e-6
    cached = workload(input_tokens=1000, output_tokens=1, cached_input_share=1.0, batch_tolerant=True)
    cost = api_cost(cached, price(cached_input_per_1m=0.1))
    assert (cost.mode, cost.per_request_usd) == ("realtime", approx(104e-6))


def test_no_cache_price_means_cache_hits_pay_full_input():
    # 200 × $1 + 20 × $4 = 280e-6 whatever the cached share
    assert api_cost(workload(cached_input_share=0.9), price(cached_input_per_1m=None)).per_request_usd == approx(280e-6)


def test_measured_time_split_reproduces_bench_throughput():
    # no e2el in the point: TTFT 200 ms + TPOT 15 ms × 63 decode tokens = 1145 ms → input share 200 / 1145
    cap = capacity_from_point(point())
    assert cap.input_time_share == approx(200 / 1145)
    assert cap.seconds_per_input_token == approx(200 / 1145 / 204.8)
    # the bench's own mix (256 in, 64 out) must give back the bench's 0.8 req/s
    assert cap.requests_per_s(workload(input_tokens=256, output_tokens=64)) == approx(0.8)
    assert "before its first token" in cap.rule and "17.5%" in cap.rule
    # a measured end-to-end latency (vLLM bench's e2el) wins: 200 / 1600 = 12.5 %
    assert capacity_from_point(point(e2el_ms={"mean": 1600.0})).input_time_share == approx(0.125)


def test_stated_ratio_split():
    cap = ten_to_one()
    assert (cap.seconds_per_input_token, cap.seconds_per_output_token) == (approx(0.0005), approx(0.005))
    # 200 × 0.0005 + 20 × 0.005 = 0.2 s per request → 5 req/s
    assert cap.requests_per_s(workload()) == approx(5.0)


def test_self_hosted_always_on():
    # $3.6/h = $0.001/s. Peak = 1 req/s × 3 = 3 req/s ≤ 5 → 1 replica; 730 paid h → $2628/month.
    cost = self_hosted_cost(workload(peak_to_average=3), ten_to_one(), 3.6)
    assert cost.replicas == 1
    assert cost.host_monthly_usd == approx(2628.0)
    assert cost.busy_hours == approx(R * 0.2 / 3600)  # 146 h
    assert cost.utilisation == approx(146 / 730)  # 0.2
    assert cost.per_request_usd == approx(0.001)  # 2628 / 2,628,000
    # floor: $0.001/s × 0.0005 s × 1e6 = $0.50 per 1M input; × 0.005 s → $5.00 per 1M output
    assert (cost.floor_per_1m_input_usd, cost.floor_per_1m_output_usd) == (approx(0.5), approx(5.0))
    # at 20 % busy: half the host cost (input share 0.1 s / 0.2 s) over 525.6M input tokens = $2.50 (= 0.5 / 0.2)
    assert (cost.per_1m_input_usd, cost.per_1m_output_usd) == (approx(2.5), approx(25.0))


def test_replicas_follow_the_peak():
    # at 100 % of the SLO load: peak 1 req/s × 12 = 12 req/s at 5 req/s per replica → ceil(2.4) = 3 replicas,
    # 3 × 730 × 3.6 = 7884
    cost = self_hosted_cost(workload(peak_to_average=12), ten_to_one(), 3.6, **FULL)
    assert (cost.replicas, cost.host_monthly_usd) == (3, approx(7884.0))


def test_scale_to_zero_pays_busy_hours_over_utilisation():
    # 146 busy hours / 0.5 = 292 paid hours (< 730) × 3.6 = 1051.2; one-off 100/month on top
    cost = self_hosted_cost(
        workload(), ten_to_one(), 3.6, deployment="scale-to-zero", autoscale_utilisation=0.5, one_off_monthly=100
    )
    assert cost.paid_hours == approx(292.0)
    assert cost.monthly_usd == approx(1051.2 + 100)


def test_zero_volume_costs_nothing_but_the_one_offs():
    cost = self_hosted_cost(workload(requests_per_month=0), ten_to_one(), 3.6, one_off_monthly=50)
    assert (cost.replicas, cost.host_monthly_usd, cost.monthly_usd) == (0, 0.0, 50.0)
    assert cost.per_1m_input_usd is None and cost.utilisation is None
    assert api_cost(workload(requests_per_month=0), price()).monthly_usd == 0.0


# API ×10: $10 in / $2.5 cached / $40 out → 200 × 10 + 20 × 40 = 2800e-6 per request (no caching);
# one replica: h = 3.6 × 730 = $2628/month, carries m = 5 req/s × 2,628,000 / 3 = 4,380,000 requests/month.
A = 2800e-6


def test_break_even_always_on():
    w, cap, api = workload(peak_to_average=3), ten_to_one(), api_cost(workload(), price(10))
    assert api.per_request_usd == approx(A)
    assert break_even(w, api, cap, 3.6, **FULL).volume == approx(2628 / A)  # 938,571 requests/month
    # one-off $1000/month: saving per full replica 4,380,000 A − 2628 = 9636 ≥ 1000 → 1 replica: (2628 + 1000) / A
    assert break_even(w, api, cap, 3.6, one_off_monthly=1000, **FULL).volume == approx(3628 / A)
    # one-off $15000/month > 9636 → needs 2 replicas: (2 × 2628 + 15000) / A = 7,234,286 (inside (m, 2m])
    be = break_even(w, api, cap, 3.6, one_off_monthly=15000, **FULL)
    assert be.volume == approx((2 * 2628 + 15000) / A)
    assert 4_380_000 < be.volume <= 8_760_000

    # and it really is the crossing
    def gap(v: float) -> float:
        return self_hosted_cost(w.with_volume(v), cap, 3.6, one_off_monthly=15000, **FULL).monthly_usd - A * v

    assert gap(be.volume) <= 1e-6 and gap(be.volume * 0.999) > 0


def test_break_even_says_where_a_new_replica_can_lose_again():
    # API $3 in / $20 out: 200 × 3 + 20 × 20 = 1000e-6 per request; a full replica saves 4,380,000 × 1e-3 − 2628
    # = 1752/month. First crossing 2628 / 1e-3 = 2,628,000; just above m = 4,380,000 two replicas cost 5256 while
    # the API charges 4380, so self-hosting only stays cheaper from 2 × 2628 / 1e-3 = 5,256,000.
    w = workload(peak_to_average=3)
    be = break_even(
        w, api_cost(w, price(input_per_1m=3, output_per_1m=20, cached_input_per_1m=None)), ten_to_one(), 3.6, **FULL
    )
    assert (be.volume, be.stays_cheaper_from) == (approx(2_628_000), approx(5_256_000))
    assert "stays cheaper from 5,256,000" in be.reason
    cost = self_hosted_cost(w.with_volume(4_400_000), ten_to_one(), 3.6, **FULL)
    assert cost.replicas == 2 and cost.monthly_usd > 4_400_000 * 1e-3  # the window where the API wins again


def test_break_even_scale_to_zero_takes_the_linear_crossing():
    # $0.001/s × 0.2 s / 0.5 = $0.0004 per request; with $1000/month one-off: 1000 / (0.0028 − 0.0004) = 416,667
    w, api = workload(peak_to_average=3), api_cost(workload(), price(10))
    be = break_even(w, api, ten_to_one(), 3.6, deployment="scale-to-zero", autoscale_utilisation=0.5,
                    one_off_monthly=1000)  # fmt: skip
    assert be.volume == approx(1000 / (A - 0.0004))
    zero = break_even(w, api, ten_to_one(), 3.6, deployment="scale-to-zero", autoscale_utilisation=0.5)
    assert zero.volume == 0 and "every volume" in zero.reason


def test_api_cheaper_at_every_volume_says_so():
    # price ×1: 4,380,000 × 280e-6 = $1226 < $2628 for a full replica → never
    be = break_even(workload(peak_to_average=3), api_cost(workload(), price()), ten_to_one(), 3.6)
    assert be.volume is None and be.api_cheaper_always
    assert "API is cheaper at every volume" in be.reason
    # busy share needed: $0.0002 per request at full load / $0.00028 API = 71.4 % — impossible at peak/avg 3
    assert be.utilisation_needed == approx(0.0002 / 280e-6)


def test_payback():
    assert payback_months(1200, api_monthly=500, host_monthly=300) == approx(6.0)  # 1200 / (500 − 300)
    assert payback_months(1200, api_monthly=300, host_monthly=500) is None
    assert payback_months(0, api_monthly=500, host_monthly=300) == 0.0


def test_cascade_cost_and_break_even():
    w, cap, p = workload(peak_to_average=3), ten_to_one(), price(10)
    # local model sees all 2,628,000 requests (1 replica, $2628) + 20 % escalated at 2800e-6 → 525,600 × A = 1471.68
    c = cascade_cost(w, p, cap, 3.6, 0.2)
    assert c.monthly_usd == approx(2628 + 0.2 * R * A)
    assert c.per_1k_requests_usd == approx((2628 + 0.2 * R * A) / R * 1000)
    # break-even vs all-API: the host must beat the 80 % of API spend it saves: 2628 / (0.8 A)
    be = break_even(w, api_cost(w, p), cap, 3.6, escalation_share=0.2)
    assert be.volume == approx(2628 / (0.8 * A))
    with pytest.raises(OfframpError):
        cascade_cost(w, p, cap, 3.6, 1.5)


def test_bad_load_point_is_an_error():
    with pytest.raises(OfframpError, match="no completed requests"):
        capacity_from_point(point(completed=0))
    with pytest.raises(OfframpError, match="output weight"):
        capacity_from_point(point(), output_weight=0)
    classifier = point(output_tokens=0, output_tokens_per_s=0.0)  # a pooling load: the weight is unused, not unchecked
    with pytest.raises(OfframpError, match="output weight"):
        capacity_from_point(classifier, output_weight=-1)
    assert capacity_from_point(classifier).input_time_share == 1.0
    with pytest.raises(OfframpError, match="TTFT"):
        capacity_from_point(point(ttft_ms={"p99": 1.0}))


@pytest.mark.parametrize(
    ("hosting", "message"),
    [
        ({"deployment": "sometimes"}, "unknown deployment 'sometimes'"),
        ({"autoscale_utilisation": 0.0}, "autoscale utilisation must be in (0, 1]"),
        ({"target_utilisation": 1.5}, "target utilisation must be in (0, 1]"),
    ],
)
def test_self_hosted_cost_and_break_even_check_hosting_alike(hosting, message):
    w, cap = workload(), ten_to_one()
    with pytest.raises(OfframpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        self_hosted_cost(w, cap, 3.6, **hosting)
    with pytest.raises(OfframpError, match=message.replace("(", r"\(").replace(")", r"\)")):
        break_even(w, api_cost(w, price()), cap, 3.6, **hosting)
    with pytest.raises(TypeError):  # a misspelt hosting option is an error, not a silent default
        self_hosted_cost(w, cap, 3.6, deploymnet="always-on")

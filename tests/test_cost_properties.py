"""Properties of the cost model over many generated workloads, prices and load points (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from offramp.artifacts import LoadPoint
from offramp.cost.breakeven import break_even
from offramp.cost.model import HOURS_PER_MONTH, SECONDS_PER_MONTH, api_cost, capacity_from_point, self_hosted_cost
from offramp.cost.prices import ApiPrice
from offramp.cost.workload import Workload

positive = st.floats(min_value=0.01, max_value=1e3, allow_nan=False, allow_infinity=False)
tokens = st.floats(min_value=1, max_value=8000)
share = st.floats(min_value=0, max_value=1)
volume = st.floats(min_value=0, max_value=1e10)


@st.composite
def workloads(draw) -> Workload:
    return Workload(
        requests_per_month=draw(volume),
        input_tokens=draw(tokens),
        output_tokens=draw(tokens),
        cached_input_share=draw(share),
        peak_to_average=draw(st.floats(min_value=1, max_value=20)),
        batch_tolerant=draw(st.booleans()),
    )


@st.composite
def prices(draw) -> ApiPrice:
    inp = draw(positive)
    return ApiPrice(
        input_per_1m=inp,
        cached_input_per_1m=draw(st.none() | st.floats(min_value=0, max_value=inp)),
        output_per_1m=draw(positive),
        batch_discount=draw(st.floats(min_value=0, max_value=0.9)),
        batch_applies_to_cached=draw(st.booleans()),
        date="2025-01",
        source="generated",
    )


@st.composite
def capacities(draw):
    tin, tout = draw(st.floats(10, 1e5)), draw(st.floats(1, 1e4))
    p = LoadPoint(
        completed=100, failed=0, duration_s=100.0, requests_per_s=1.0, input_tokens=int(tin * 100),
        output_tokens=max(int(tout * 100), 200), input_tokens_per_s=tin, output_tokens_per_s=tout,
        ttft_ms={"mean": draw(st.floats(1, 5000))}, tpot_ms={"mean": draw(st.floats(1, 500))}, itl_ms={},
        meets_slo=True,
    )  # fmt: skip
    return capacity_from_point(p, draw(st.none() | st.floats(0.1, 100)))


deployments = st.sampled_from(["always-on", "scale-to-zero"])
per_hour = st.floats(min_value=0.01, max_value=100)
one_off = st.floats(min_value=0, max_value=1e5)


@settings(max_examples=300, deadline=None)
@given(workloads(), prices(), capacities(), per_hour, deployments, one_off, volume, volume)
def test_cost_is_monotone_in_volume(w, p, cap, hourly, deployment, fixed, v1, v2):
    lo, hi = sorted((v1, v2))
    kw = {"deployment": deployment, "one_off_monthly": fixed}
    assert api_cost(w.with_volume(lo), p).monthly_usd <= api_cost(w.with_volume(hi), p).monthly_usd
    low = self_hosted_cost(w.with_volume(lo), cap, hourly, **kw).monthly_usd
    high = self_hosted_cost(w.with_volume(hi), cap, hourly, **kw).monthly_usd
    assert low <= high * (1 + 1e-12)


@settings(max_examples=300, deadline=None)
@given(workloads(), prices(), capacities(), per_hour, st.floats(min_value=1.01, max_value=100))
def test_break_even_volume_scales_inversely_with_api_price(w, p, cap, hourly, k):
    """Always-on without one-off costs: k times the API's prices → 1/k times the break-even volume.

    (Scale-to-zero has no such law: its linear part crosses at volume 0 or never, whatever the price.)
    """
    base = break_even(w, api_cost(w, p), cap, hourly)
    assume(base.volume is not None)
    scaled_price = p.model_copy(
        update={
            "input_per_1m": p.input_per_1m * k,
            "output_per_1m": p.output_per_1m * k,
            "cached_input_per_1m": None if p.cached_input_per_1m is None else p.cached_input_per_1m * k,
        }
    )
    scaled = break_even(w, api_cost(w, scaled_price), cap, hourly)
    assert scaled.volume == pytest.approx(base.volume / k, rel=1e-9)


@settings(max_examples=300, deadline=None)
@given(workloads(), prices(), capacities(), per_hour, deployments, one_off, st.floats(1.01, 100))
def test_dearer_api_never_raises_break_even(w, p, cap, hourly, deployment, fixed, k):
    kw = {"deployment": deployment, "one_off_monthly": fixed}
    base = break_even(w, api_cost(w, p), cap, hourly, **kw)
    dearer = p.model_copy(update={"input_per_1m": p.input_per_1m * k, "output_per_1m": p.output_per_1m * k})
    more = break_even(w, api_cost(w, dearer), cap, hourly, **kw)
    if base.volume is not None:
        assert more.volume is not None and more.volume <= base.volume * (1 + 1e-9)


@settings(max_examples=300, deadline=None)
@given(workloads(), prices(), capacities(), per_hour, deployments, one_off)
def test_break_even_is_the_first_crossing(w, p, cap, hourly, deployment, fixed):
    kw = {"deployment": deployment, "one_off_monthly": fixed}
    api = api_cost(w, p)
    be = break_even(w, api, cap, hourly, **kw)
    assume(be.volume is not None and be.volume > 1)

    def gap(v: float) -> float:  # self-hosted minus API, per month
        return self_hosted_cost(w.with_volume(v), cap, hourly, **kw).monthly_usd - api.per_request_usd * v

    scale = api.per_request_usd * be.volume
    assert gap(be.volume) <= 1e-9 * scale
    for f in (0.5, 0.9, 0.999):
        assert gap(be.volume * f) > -1e-9 * scale
    # from `stays_cheaper_from` on, including just after every replica step, self-hosting never loses again
    stable = be.stays_cheaper_from
    per_replica = cap.requests_per_s(w) * SECONDS_PER_MONTH / w.peak_to_average
    steps = [n * per_replica * (1 + 1e-9) for n in range(1, 50)]
    for v in [stable, stable * 1.001, stable * 3, *(s for s in steps if s >= stable)]:
        assert gap(v) <= 1e-9 * api.per_request_usd * v


def test_any_traffic_pays_for_a_replica():
    """Found by hypothesis in CI: a load of under 1e-9 of one replica fell inside the rounding tolerance and bought
    zero replicas, so a tiny volume cost nothing always-on."""
    p = LoadPoint(
        completed=100, failed=0, duration_s=100.0, requests_per_s=1.0, input_tokens=10_000_000, output_tokens=1_000_000,
        input_tokens_per_s=1e5, output_tokens_per_s=1e4, ttft_ms={"mean": 4.0}, tpot_ms={"mean": 1.0}, itl_ms={},
        meets_slo=True,
    )  # fmt: skip
    cap = capacity_from_point(p, None)
    w = Workload(requests_per_month=1.0, input_tokens=10, output_tokens=1)
    assert w.requests_per_month / SECONDS_PER_MONTH / cap.requests_per_s(w) < 1e-9  # the case that broke
    cost = self_hosted_cost(w, cap, 2.0)
    assert cost.replicas == 1 and cost.monthly_usd == pytest.approx(2.0 * HOURS_PER_MONTH)
    assert self_hosted_cost(w.with_volume(0), cap, 2.0).replicas == 0

"""The cost model's assumptions that used to favour one side (#18.4), each checked against its own arithmetic.

Prices come from the test's own entries or from the catalogue at run time, never pinned: a user who edits
prices.yaml must not break these.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

from offramp.artifacts import LoadPoint
from offramp.cost.breakeven import break_even
from offramp.cost.model import (
    HOURS_PER_MONTH,
    SECONDS_PER_MONTH,
    api_cost,
    bench_range_warnings,
    capacity_from_point,
    self_hosted_cost,
)
from offramp.cost.prices import ApiPrice
from offramp.cost.workload import Workload

approx = pytest.approx


def price(**kw) -> ApiPrice:
    base = dict(input_per_1m=1.0, cached_input_per_1m=0.1, output_per_1m=4.0, date="2025-06", source="https://x.test")
    return ApiPrice(**{**base, **kw})


def workload(**kw) -> Workload:
    return Workload(**{"requests_per_month": 1_000_000, "input_tokens": 2000, "output_tokens": 20, **kw})


# --- a host whose true cost is known: prefill 1 ms per input token, decode 5 ms of host time per output token ---
PREFILL_S, DECODE_S = 1e-3, 5e-3


def sweep_point(concurrency: int, ttft_ms: float, e2el_ms: float, in_tok: int = 40, out_tok: int = 7) -> LoadPoint:
    """A saturated closed loop on that host, requests of in_tok / out_tok; TTFT carries the queueing we say."""
    per_request = in_tok * PREFILL_S + out_tok * DECODE_S
    rps = 1 / per_request if concurrency > 1 else 1 / (e2el_ms / 1000)
    n = 100
    return LoadPoint(
        concurrency=concurrency, completed=n, failed=0, duration_s=n / rps, requests_per_s=rps,
        input_tokens=n * in_tok, output_tokens=n * out_tok, input_tokens_per_s=rps * in_tok,
        output_tokens_per_s=rps * out_tok, ttft_ms={"mean": ttft_ms, "p50": ttft_ms, "p99": ttft_ms * 2},
        tpot_ms={"mean": 30.0, "p50": 30.0, "p99": 40.0}, itl_ms={"mean": 30.0}, meets_slo=True,
        e2el_ms={"mean": e2el_ms},
    )  # fmt: skip


def test_capacity_is_fitted_from_the_sweep_not_one_points_time_split():
    # c=1: prefill alone, TTFT = 40 × 1 ms; c=8: the host is saturated and TTFT is mostly queueing (500 of 600 ms)
    low = sweep_point(1, ttft_ms=40.0, e2el_ms=40.0 + 7 * 5.0)
    busy = sweep_point(8, ttft_ms=500.0, e2el_ms=600.0)
    w = workload(input_tokens=2000, output_tokens=100)  # priced far from the bench's 40 in / 7 out
    truth = 1 / (2000 * PREFILL_S + 100 * DECODE_S)  # 0.4 requests/s
    fitted = capacity_from_point(busy, prefill_point=low)
    assert fitted.requests_per_s(w) == approx(truth, rel=1e-6)
    assert fitted.rule.startswith("fitted from the sweep")
    one_point = capacity_from_point(busy)  # the old rule: 500/600 of host time charged to input
    assert abs(one_point.requests_per_s(w) / truth - 1) > 0.2  # what the fit fixes
    warned = bench_range_warnings(w, [low, busy])
    assert len(warned) == 2 and "2,000 input tokens/request" in warned[0] and "(40–40)" in warned[0]
    assert bench_range_warnings(workload(input_tokens=50, output_tokens=8), [low, busy]) == []


def test_replicas_keep_headroom_below_the_slo_load_and_an_optional_spare():
    cap = capacity_from_point(sweep_point(8, 500.0, 600.0))
    w = workload(input_tokens=40, output_tokens=7, peak_to_average=3.0)
    peak = w.requests_per_month / SECONDS_PER_MONTH * w.peak_to_average
    per_replica = cap.requests_per_s(w)
    for target in (1.0, 0.7, 0.3):
        w_big = w.with_volume(w.requests_per_month * per_replica / peak * 1.5)  # 1.5 replicas' worth at 100 %
        cost = self_hosted_cost(w_big, cap, 1.0, target_utilisation=target)
        assert cost.needed_replicas == math.ceil(1.5 / target - 1e-9)
    spare = self_hosted_cost(w, cap, 1.0, spare_replicas=1)
    plain = self_hosted_cost(w, cap, 1.0)
    assert spare.replicas == plain.replicas + 1
    assert spare.host_monthly_usd == approx(plain.host_monthly_usd + HOURS_PER_MONTH * 1.0)


def test_reserved_hours_are_paid_busy_or_not():
    cap = capacity_from_point(sweep_point(8, 500.0, 600.0))
    w = workload(input_tokens=40, output_tokens=7, requests_per_month=10_000)  # a few busy hours a month
    reserved_per_hour = 0.5
    cost = self_hosted_cost(w, cap, reserved_per_hour, deployment="scale-to-zero", committed=True)
    assert cost.host_monthly_usd >= HOURS_PER_MONTH * reserved_per_hour * cost.replicas
    on_demand = self_hosted_cost(w, cap, reserved_per_hour, deployment="scale-to-zero")
    assert on_demand.host_monthly_usd < cost.host_monthly_usd  # scale-to-zero only saves on demand


def test_a_gpu_of_an_eight_gpu_instance_is_billed_as_the_whole_instance():
    cap = capacity_from_point(sweep_point(8, 500.0, 600.0))
    w = workload(input_tokens=40, output_tokens=7)
    per_gpu = 6.0
    cost = self_hosted_cost(w, cap, per_gpu, billing_unit=8)
    assert cost.needed_replicas == 1 and cost.replicas == 8
    assert cost.host_monthly_usd == approx(8 * HOURS_PER_MONTH * per_gpu)


@pytest.mark.parametrize("unit,spare,fixed", [(1, 1, 0.0), (8, 0, 0.0), (8, 1, 500.0), (4, 2, 3000.0)])
def test_break_even_is_the_first_crossing_with_spares_and_whole_instances(unit, spare, fixed):
    cap = capacity_from_point(sweep_point(8, 500.0, 600.0))
    w = workload(input_tokens=40, output_tokens=7, peak_to_average=2.0)
    api = api_cost(w, price(input_per_1m=30.0, output_per_1m=60.0))
    kw = {"billing_unit": unit, "spare_replicas": spare, "operations_monthly": fixed}
    be = break_even(w, api, cap, 0.2, **kw)
    assert be.volume is not None

    def gap(v: float) -> float:
        return self_hosted_cost(w.with_volume(v), cap, 0.2, **kw).monthly_usd - api.per_request_usd * v

    assert gap(be.volume) <= 1e-6
    grid = [be.volume * f for f in (0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 0.999)]
    assert all(gap(v) > 0 for v in grid)  # nothing cheaper below it
    stays = be.stays_cheaper_from
    assert all(gap(stays * f) <= 1e-6 for f in (1.0, 1.01, 1.5, 2, 3.7, 10, 100))


def test_operations_cost_is_paid_every_month_and_moves_break_even():
    cap = capacity_from_point(sweep_point(8, 500.0, 600.0))
    w = workload(input_tokens=40, output_tokens=7)
    api = api_cost(w, price(input_per_1m=30.0, output_per_1m=60.0))
    without = break_even(w, api, cap, 0.2)
    with_ops = break_even(w, api, cap, 0.2, operations_monthly=400.0)
    assert with_ops.volume > without.volume
    cost = self_hosted_cost(w, cap, 0.2, operations_monthly=400.0)
    assert cost.monthly_usd == approx(cost.host_monthly_usd + 400.0)


def test_no_cache_discount_below_the_vendors_minimum_prompt():
    p = price(cache_min_prompt_tokens=1024)
    short = api_cost(workload(input_tokens=200, cached_input_share=0.8), p)
    assert short.cached_share_billed == 0 and "below the 1,024 tokens" in short.cache_note
    assert short.per_request_usd == approx((200 * p.input_per_1m + 20 * p.output_per_1m) / 1e6)
    long = api_cost(workload(input_tokens=2000, cached_input_share=0.8), p)
    expected = (2000 * (0.2 * p.input_per_1m + 0.8 * p.cached_input_per_1m) + 20 * p.output_per_1m) / 1e6
    assert long.per_request_usd == approx(expected)


def test_cache_writes_are_paid_and_caching_is_off_where_it_loses():
    p = price(cache_write_per_1m=1.25)  # Anthropic-style: writes at 1.25x the input price
    h = (1.25 - 1.0) / (1.25 - 0.1)  # hit rate from which caching pays
    assert api_cost(workload(cached_input_share=0.5), p).cache_break_even_hit_rate == approx(h)
    on = api_cost(workload(cached_input_share=0.5), p)  # every token not read is written (the default)
    expected = (2000 * (0.5 * 0.1 + 0.5 * 1.25) + 20 * 4.0) / 1e6
    assert on.per_request_usd == approx(expected) and on.cache_write_share_billed == 0.5
    off = api_cost(workload(cached_input_share=0.1), p)  # below h: a team would not turn caching on
    assert off.cached_share_billed == 0 and "priced off" in off.cache_note
    assert off.per_request_usd == approx((2000 * 1.0 + 20 * 4.0) / 1e6)
    stated = api_cost(workload(cached_input_share=0.5, cache_write_share=0.1), p)
    assert stated.per_request_usd == approx((2000 * (0.4 * 1.0 + 0.5 * 0.1 + 0.1 * 1.25) + 80) / 1e6)


def test_reasoning_tokens_are_billed_as_output():
    p = price()
    plain = api_cost(workload(), p)
    thinking = api_cost(workload(reasoning_tokens=300), p)
    assert thinking.per_request_usd - plain.per_request_usd == approx(300 * p.output_per_1m / 1e6)
    assert thinking.billed_output_tokens == 320


def test_the_api_is_priced_on_its_own_prompt():
    p = price(cached_input_per_1m=None)
    w = workload(input_tokens=42, api_input_tokens=6000)
    assert api_cost(w, p).per_request_usd == approx((6000 * 1.0 + 20 * 4.0) / 1e6)


# --- through `offramp breakeven`: the catalogue, the flags and the report together ---


def bench_file(tmp_path, points: list[LoadPoint]):
    report = {
        "stage": "bench", "created_at": "2026-12-01T00:00:00+00:00", "hardware": {"cpu": "x", "cpu_cores": 2},
        "model": "smollm2-135m-instruct", "endpoint": "http://127.0.0.1:8000/v1",
        "slo": {"p99_ttft_s": 2.0, "p99_tpot_ms": 200.0},
        "points": [p.model_dump() for p in points], "sustainable": points[-1].model_dump(),
    }  # fmt: skip
    path = tmp_path / "bench_report.json"
    path.write_text(json.dumps(report))
    return path


def user_prices(tmp_path) -> tuple:
    entry = {"kind": "gpu", "on_demand_per_hour": 2.0, "reserved_1y_per_hour": 1.3, "date": "2026-12",
             "source": "test contract"}  # fmt: skip
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"hosts": {"my-gpu": entry}}))
    return path, entry


def test_breakeven_reserved_with_scale_to_zero_pays_every_hour(cli, tmp_path):
    prices, entry = user_prices(tmp_path)
    bench = bench_file(tmp_path, [sweep_point(1, 40.0, 75.0), sweep_point(8, 500.0, 600.0)])
    out = tmp_path / "out"
    proc = cli(
        "breakeven", "--api", "gpt-4o-mini", "--bench", str(bench), "--prices", str(prices), "--host", "my-gpu",
        "--pricing", "reserved_1y", "--deployment", "scale-to-zero", "--requests-per-month", "1000",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "breakeven_report.json").read_text())
    cost = report["self_hosted"]["cost"]
    assert cost["host_monthly_usd"]["value"] >= 730 * entry["reserved_1y_per_hour"] * cost["replicas"]["value"]
    # the operations default is in the monthly figure and stated
    ops = report["operations"]
    assert cost["monthly_usd"]["value"] == approx(cost["host_monthly_usd"]["value"] + ops["monthly_usd"])
    assert ops["monthly_usd"] > 0 and any("operations:" in a for a in report["assumptions"])
    assert report["summary"]["operations_monthly_usd"]["value"] == ops["monthly_usd"]
    assert "70%" in " ".join(report["assumptions"])  # the target utilisation, stated
    assert "prefix cache" in report["self_hosted"]["prefix_cache"]["credit"]


def test_breakeven_prices_the_api_on_the_prompts_it_is_sent(cli, tmp_path):
    labels = [f"label_{i}" for i in range(40)]
    system = "Classify into one of: " + ", ".join(labels) + ". Examples: " + " ".join(f"q{i} => {x}" for i, x in
                                                                                    enumerate(labels))  # fmt: skip
    rows = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": f"query number {i}"},
                          {"role": "assistant", "content": labels[i]}]} for i in range(5)]  # fmt: skip
    prompts = tmp_path / "api_prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = bench_file(tmp_path, [sweep_point(1, 40.0, 75.0), sweep_point(8, 500.0, 600.0)])
    out = tmp_path / "out"
    proc = cli(
        "breakeven", "--api", "gpt-4o-mini", "--bench", str(bench), "--host-price-per-hour", "0.2",
        "--requests-per-month", "1000000", "--api-prompts", str(prompts), "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "breakeven_report.json").read_text())
    prompt = report["api"]["prompt"]
    assert prompt["input_tokens"] > 5 * 40  # the label list and examples, not the bench's 40-token prompt
    assert "api_prompts.jsonl" in prompt["source"] and "shares" in prompt["source"]
    assert report["workload"]["cached_input_share"] > 0.5  # the system prompt is a prefix every call repeats
    assert report["summary"]["api_input_tokens"]["value"] == prompt["input_tokens"]
    assert not any("local model's prompt" in x for x in report["warnings"])


def test_reasoning_tokens_measured_by_the_eval_are_billed_and_missing_ones_are_flagged(cli, tmp_path):
    bench = bench_file(tmp_path, [sweep_point(1, 40.0, 75.0), sweep_point(8, 500.0, 600.0)])
    interval = {"value": 80.0, "ci_low": 75.0, "ci_high": 85.0}
    usage = {"requests": 10, "reasoning_tokens": 2500, "reasoning_reported": 10}
    api = {"name": "api", "spec": "openai:gpt-5-mini", "source": "measured", "accuracy": interval, "usage": usage}
    ev = {"stage": "eval", "created_at": "x", "hardware": {}, "task": "t", "n_queries": 10, "systems": [api],
          "gate": {"verdict": "GO", "reason": "r"}}  # fmt: skip
    eval_path = tmp_path / "eval_report.json"
    eval_path.write_text(json.dumps(ev))
    args = ["breakeven", "--api", "gpt-5-mini", "--bench", str(bench), "--host-price-per-hour", "0.2",
            "--requests-per-month", "1000000"]  # fmt: skip
    assert cli(*args, "--eval", str(eval_path), "--out", str(tmp_path / "a")).returncode == 0
    measured = json.loads((tmp_path / "a" / "breakeven_report.json").read_text())
    assert measured["workload"]["reasoning_tokens"] == 250  # 2,500 over 10 answers
    assert "measured: 10 answers of api" in measured["api"]["prompt"]["reasoning_source"]
    assert cli(*args, "--out", str(tmp_path / "b")).returncode == 0
    unmeasured = json.loads((tmp_path / "b" / "breakeven_report.json").read_text())
    extra = measured["api"]["cost"]["per_request_usd"]["value"] - unmeasured["api"]["cost"]["per_request_usd"]["value"]
    out_price = measured["api"]["list_prices"]["output_per_1m"]["value"]
    assert extra == approx(250 * out_price / 1e6)
    assert any("reasoning tokens" in w and "understated" in w for w in unmeasured["warnings"])
    assert not any("reasoning tokens" in w for w in measured["warnings"])

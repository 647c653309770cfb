"""The decision report renders in a real browser (headless Chromium), with its verdict and plots visible."""

import importlib.util
import os
import re
import shutil

import pytest

from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.pipeline import report
from offramp.pipeline.config import PipelineConfig
from offramp.pipeline.runner import StageResult

spec = importlib.util.spec_from_file_location(
    "shot", os.path.join(os.path.dirname(__file__), "../scripts/screenshot_report.py")
)
shot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shot)


def _interval(v, w=5.0):
    return {"value": v, "ci_low": v - w, "ci_high": v + w}


def _point(c, rps, ttft_p99, tpot_p99, ok):
    """A load point with the float noise a real bench has (32 requests of 41.66 input / 6.94 output tokens)."""
    return {
        "concurrency": c,
        "completed": 32,
        "failed": 0,
        "duration_s": 32 / rps,
        "requests_per_s": rps,
        "input_tokens": 1333,
        "output_tokens": 222,
        "input_tokens_per_s": rps * 1333 / 32,
        "output_tokens_per_s": rps * 222 / 32,
        "ttft_ms": {"mean": ttft_p99 * 0.7, "p50": ttft_p99 * 0.72, "p99": ttft_p99},
        "tpot_ms": {"mean": tpot_p99 * 0.75, "p50": tpot_p99 * 0.74, "p99": tpot_p99},
        "itl_ms": {"mean": tpot_p99 * 0.75, "p50": tpot_p99 * 0.7, "p99": tpot_p99 * 1.5},
        "meets_slo": ok,
    }


@pytest.fixture
def run_dir(tmp_path):
    hw = hardware_info()
    base = {"created_at": "2026-11-24T00:00:00+00:00", "hardware": hw}
    points = [_point(1, 1.042013535741532, 400.9366994099764, 150.65913267792348, True)]
    points.append(_point(4, 2.338167370180547, 799.4954444697942, 257.61617796654417, False))
    (tmp_path / "eval").mkdir()
    write_json(
        tmp_path / "eval/eval_report.json",
        {
            **base,
            "stage": "eval",
            "task": "banking77",
            "n_queries": 231,
            "systems": [
                {
                    "name": "tuned",
                    "spec": "smollm2",
                    "source": "measured",
                    "mode": "constrained",
                    "accuracy": _interval(71.0),
                    "macro_f1": _interval(69.0),
                    "invalid_rate": 0.0,
                },
                {
                    "name": "gpt-4-1shot",
                    "spec": "cited:banking77/gpt-4-1shot",
                    "source": "cited",
                    "accuracy": _interval(80.4, 0.0),
                    "reference": "Loukas et al., ICAIF 2023, Table 4",
                },
            ],
            "gate": {"expression": "accuracy>=baseline-5", "verdict": "NO-GO", "reason": "71.0 < 80.4 - 5"},
        },
    )
    (tmp_path / "serve").mkdir()
    write_json(
        tmp_path / "serve/bench_report.json",
        {
            **base,
            "stage": "bench",
            "model": "tuned",
            "endpoint": "http://127.0.0.1:8000/v1",
            "slo": {"p99_ttft_s": 2.0, "p99_tpot_ms": 200.0},
            "points": [points[0], points[1]],
            "sustainable": points[0],
            "prefix_cache_hit_rate": 0.0,
        },
    )
    _breakeven(tmp_path)
    _cascade(tmp_path / "cascade")
    return tmp_path


def _breakeven(d):
    """The breakeven stage's report and plot, made by the real cost code (its floats, its None where the API
    is cheaper at every volume), and the cascade's cost beside it."""
    from offramp.artifacts import load_report
    from offramp.cost.cli import _write_outputs
    from offramp.cost.prices import load_catalogue
    from offramp.cost.report import Inputs, analyse
    from offramp.cost.workload import Workload

    cat = load_catalogue()
    bench = load_report(d / "serve/bench_report.json", "bench")
    w = Workload(requests_per_month=1_000_000, input_tokens=1333 / 32, output_tokens=222 / 32, peak_to_average=3)
    common = {
        "api_name": "gpt-4o-mini",
        "api_price": cat.api_price("gpt-4o-mini"),
        "host_name": "aws-c7i-xlarge",
        "host": cat.host_price("aws-c7i-xlarge"),
        "bench": bench,
        "bench_path": d / "serve/bench_report.json",
        "workload": w,
        "eval": load_report(d / "eval/eval_report.json", "eval"),
    }
    inp = Inputs(**common)
    _write_outputs(d / "breakeven", inp, analyse(inp))
    cascade = Inputs(**common, escalation_share=0.2468)
    _write_outputs(d / "cascade/breakeven", cascade, analyse(cascade))


def _cascade(d):
    """A cascade report made by the real curve code on 40 synthetic queries (cited baseline: an estimate)."""
    import numpy as np

    from offramp.evals.cascade import CascadeInputs, evaluate
    from offramp.evals.cascade_cli import plot
    from offramp.reports import write_report

    rng = np.random.default_rng(0)
    gold = np.repeat(np.arange(4), 10)
    conf = rng.random(40)
    local = np.where(conf > 0.5, gold, (gold + 1) % 4)
    res = evaluate(CascadeInputs(gold, local, conf, None, 80.4, 1e-5, 2e-4), max_escalation=0.3)
    res.update(candidate="tuned", baseline="gpt-4-1shot", cost_rule="local sees every query")
    res["escalation_share"] = round(1 - res["on_test"]["local_share"], 4)  # as `offramp cascade` adds them
    (d / "cascade").mkdir(parents=True)
    plot(res, d / "cascade/cascade.png", "tuned", "gpt-4-1shot")
    write_report(d / "cascade/cascade_report.json", "cascade", res)


def test_report_renders_in_chromium(run_dir, tmp_path):
    if shot.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed")
    results = [StageResult("eval", "done", 60, run_dir / "eval"), StageResult("bench", "done", 90, run_dir / "serve")]
    results.append(StageResult("breakeven", "done", 3.4127, run_dir / "breakeven"))
    results.append(StageResult("cascade", "done", 5, run_dir / "cascade"))
    html = report.write(run_dir, report.collect(PipelineConfig().model_dump(), results))
    text = html.read_text()
    assert "NO-GO" in text and "Loukas" in text and text.count("data:image/png;base64,") == 3
    assert "Cascade: tuned first" in text and "Estimated" in text and "optimistic" in text
    png = shot.screenshot(html, tmp_path / "shot.png", height=1200)
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    non_white = (img[..., :3].mean(axis=2) < 0.9).mean()
    assert non_white > 0.01  # text, tables and the plot are drawn, not a blank page
    shutil.copy(png, run_dir / "screenshot.png")
    _reads_for_a_person(shot.visible_text(html))


def _reads_for_a_person(page: str) -> None:
    """Every figure on the page formatted for a reader: no raw float, no Python repr, no made-up interval."""
    assert "Cost and break-even" in page and "Serving: vLLM" in page  # the sections under test are there
    assert not re.findall(r"\d+\.\d{5,}", page), "raw floats on the page"
    assert not re.findall(r"\bNone\b|\bnan\b|\binf\b", page), "None / nan / inf on the page"
    assert not re.findall(r"\{'|':|\['|\{\"", page), "a Python dict or list repr on the page"
    assert not re.findall(r"\[(\d+(?:\.\d+)?) %, \1 %\]", page), "a zero-width interval shown as if measured"
    assert not re.findall(r"\d\.\d+e[+-]?\d", page), "scientific notation on the page"
    lines = page.splitlines()

    def row(label: str) -> str:  # the cost table's value cell, the line after its label
        return lines[lines.index(label) + 1]

    for label in ("API per month", "self-hosted per month"):
        assert re.fullmatch(r"\$[\d,]+\.\d\d/month", row(label)), (label, row(label))
    assert row("requests per month") == "1,000,000 requests/month"
    assert row("break-even volume").startswith("never: the API is cheaper at every volume")
    assert row("payback").startswith("never")
    assert re.fullmatch(r"\d+\.\d %", row("utilisation")), row("utilisation")
    assert "80.4 % (cited, no interval)" in page
    assert "SLO: p99 TTFT ≤ 2 s, p99 TPOT ≤ 200 ms" in page
    assert "list price 2025-06" in page and "measured on " in page and "computed: " in page


def _rec(value, unit, **extra):
    return {"value": value, "unit": unit, "source": "computed", **extra}


@pytest.mark.parametrize(
    ("key", "record", "shown"),
    [
        ("api_monthly_usd", _rec(10.298437499999999, "USD/month"), "$10.30/month"),
        ("x", _rec(1234567.891, "USD/month"), "$1,234,567.89/month"),
        ("api_per_1m_tokens_usd", _rec(0.15234999, "USD/1M tokens"), "$0.1523 per 1M tokens"),
        ("self_hosted_per_1m_output_usd", _rec(26.57951426029743, "USD/1M tokens"), "$26.58 per 1M tokens"),
        ("per_request_usd", _rec(1.0410937e-05, "USD/request"), "$0.0104 per 1,000 requests"),
        ("price_per_hour", _rec(0.1785, "USD/hour"), "$0.1785/hour"),
        ("requests_per_month", _rec(1000000.0, "requests/month"), "1,000,000 requests/month"),
        ("utilisation", _rec(0.07331234, "share"), "7.3 %"),
        ("utilisation", _rec(None, "share"), "–"),
        ("replicas", _rec(2, "hosts"), "2 hosts"),
        ("replicas", _rec(1.0, "hosts"), "1 host"),
        ("payback_months", _rec(0.91312345, "months"), "0.913 months"),
        ("payback_months", _rec(None, "months"), "never (no saving at this volume)"),
        ("payback_months", _rec(0.0, "months"), "nothing to pay back (no one-off costs)"),
        ("break_even_requests_per_month", _rec(None, "requests/month"), "never: the API is cheaper at every volume"),
        ("break_even_requests_per_month", _rec(73170.73170731707, "requests/month"), "73,171 requests/month"),
        ("sustainable_rps", _rec(2.338167370180547, "requests/s"), "2.34 requests/s"),
        ("api_input_tokens", _rec(41.65625, "tokens/request"), "41.7 tokens/request"),
        ("new_figure", _rec(123456.789, "tokens"), "123,457 tokens"),  # a unit added later: no raw float
        ("new_figure", _rec(0.000012345678, "widgets"), "1.23 × 10^-5 widgets"),
        ("new_figure", _rec(0.012345678, ""), "0.0123"),
    ],
)
def test_every_figure_reads_for_a_person(key, record, shown):
    assert report._fmt(key, record)[0] == shown


def test_none_strings_provenance_and_slo_are_words():
    be = {"break_even": {"volume": None, "reason": "the API is cheaper at every volume: one replica costs $130.31"}}
    never = report._fmt("break_even_requests_per_month", _rec(None, "requests/month"), be)[0]
    assert never == "never: the API is cheaper at every volume: one replica costs $130.31"
    text = "no load level of the bench met the latency SLO"
    assert report._fmt("self_hosted", text) == (text, "")
    assert report._fmt("verdict", "NO-GO") == ("NO-GO", "")
    listed = {"value": 0.15, "unit": "USD/1M tokens", "source": "list_price", "date": "2025-06", "verified": False}
    listed["reference"] = "https://openai.com/api/pricing/"
    assert report._provenance(listed) == "list price 2025-06 (unverified), https://openai.com/api/pricing/"
    hw = {"cpu": "AMD EPYC", "cpu_cores": 2, "gpus": []}
    assert report._provenance({"value": 2.0, "source": "measured", "hardware": hw}) == "measured on AMD EPYC, 2 cores"
    how = {"value": 1.0, "source": "computed", "from": "prices × measured throughput × workload"}
    assert report._provenance(how) == "computed: prices × measured throughput × workload"
    assert report._slo({"p99_ttft_s": 2.0, "p99_tpot_ms": 200.0}) == "p99 TTFT ≤ 2 s, p99 TPOT ≤ 200 ms"
    assert report._slo({"p99_ttft_s": 0.5, "p99_tpot_ms": None}) == "p99 TTFT ≤ 0.5 s"
    assert report._plain({"a_b": 1.23456789, "c": [0.5, None]}) == "a b: 1.23; c: 0.5, –"
    assert (
        report._accuracy({"value": 80.4, "ci_low": 80.4, "ci_high": 80.4}, cited=True) == "80.4 % (cited, no interval)"
    )

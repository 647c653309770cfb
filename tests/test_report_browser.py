"""The decision report renders in a real browser (headless Chromium), with its verdict and plots visible."""

import importlib.util
import os
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


def _point(c, ok):
    return {
        "concurrency": c,
        "completed": 8,
        "failed": 0,
        "duration_s": 4.0,
        "requests_per_s": 2.0,
        "input_tokens": 400,
        "output_tokens": 40,
        "input_tokens_per_s": 100.0,
        "output_tokens_per_s": 10.0,
        "ttft_ms": {"mean": 90, "p50": 80, "p99": 300},
        "tpot_ms": {"mean": 30, "p50": 28, "p99": 60},
        "itl_ms": {"mean": 30, "p50": 28, "p99": 60},
        "meets_slo": ok,
    }


@pytest.fixture
def run_dir(tmp_path):
    hw = hardware_info()
    base = {"created_at": "2026-11-24T00:00:00+00:00", "hardware": hw}
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
            "slo": {"p99_ttft_s": 2.0, "p99_tpot_ms": 200},
            "points": [_point(1, True), _point(4, False)],
            "sustainable": _point(1, True),
            "prefix_cache_hit_rate": 0.9,
        },
    )
    _cascade(tmp_path / "cascade")
    return tmp_path


def _cascade(d):
    """A cascade report made by the real curve code on 40 synthetic queries (cited baseline: an estimate)."""
    import numpy as np
    from offramp.evals.cascade import CascadeInputs, evaluate
    from offramp.evals.cascade_cli import plot

    rng = np.random.default_rng(0)
    gold = np.repeat(np.arange(4), 10)
    conf = rng.random(40)
    local = np.where(conf > 0.5, gold, (gold + 1) % 4)
    res = evaluate(CascadeInputs(gold, local, conf, None, 80.4, 1e-5, 2e-4), max_escalation=0.3)
    res.update(candidate="tuned", baseline="gpt-4-1shot", cost_rule="local sees every query")
    (d / "cascade").mkdir(parents=True)
    plot(res, d / "cascade/cascade.png", "tuned", "gpt-4-1shot")
    write_json(d / "cascade/cascade_report.json", res)


def test_report_renders_in_chromium(run_dir, tmp_path):
    if shot.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium not installed")
    results = [StageResult("eval", "done", 60, run_dir / "eval"), StageResult("bench", "done", 90, run_dir / "serve")]
    results.append(StageResult("cascade", "done", 5, run_dir / "cascade"))
    html = report.write(run_dir, report.collect(PipelineConfig().model_dump(), results))
    text = html.read_text()
    assert "NO-GO" in text and "Loukas" in text and text.count("data:image/png;base64,") == 2
    assert "Cascade: tuned first" in text and "Estimated" in text and "optimistic" in text
    png = shot.screenshot(html, tmp_path / "shot.png", height=1200)
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    non_white = (img[..., :3].mean(axis=2) < 0.9).mean()
    assert non_white > 0.01  # text, tables and the plot are drawn, not a blank page
    shutil.copy(png, run_dir / "screenshot.png")

import json
import os

import numpy as np
import pytest

from offramp.errors import OfframpError
from offramp.evals.cascade import ALL_API, CascadeInputs, calibration_split, choose_threshold, curve, evaluate, point

# 4 queries. Local model: right on q0, q1 (confident), wrong on q2, q3 (unsure). API: right on q0, q1, q2.
GOLD = np.array([0, 1, 2, 3])
LOCAL = np.array([0, 1, 9, 9])
CONF = np.array([0.9, 0.8, 0.3, 0.2])
API = np.array([0, 1, 2, 9])
# $ per query: local 0.001 (paid for every query: the local model answers first), API 0.01 per escalated query


def _inputs(api=API, api_accuracy=None):
    return CascadeInputs(GOLD, LOCAL, CONF, api, api_accuracy, 0.001, 0.01)


def test_points_by_hand():
    inp = _inputs()
    # t=0.5: q0, q1 local (both right); q2 to the API (right), q3 to the API (wrong): 3/4 = 75 %.
    # cost: 0.001 + 0.5 * 0.01 = 0.006 per query = 6 $ per 1k queries.
    p = point(inp, 0.5)
    assert (p["local_share"], p["accuracy"], p["usd_per_1k_queries"]) == (0.5, 75.0, 6.0)
    # all local: 2/4 right, 1 $ per 1k; all API: 3/4 right, 10 $ per 1k.
    assert (point(inp, 0.0)["accuracy"], point(inp, 0.0)["usd_per_1k_queries"]) == (50.0, 1.0)
    assert (point(inp, ALL_API)["accuracy"], point(inp, ALL_API)["usd_per_1k_queries"]) == (75.0, 10.0)
    # t=0.3: q0..q2 local (q2 wrong), q3 API (wrong): 2/4.
    assert point(inp, 0.3)["accuracy"] == 50.0


def test_cited_baseline_gives_an_estimate():
    inp = _inputs(api=None, api_accuracy=80.0)
    # t=0.8: q0, q1 local and right; q2, q3 escalated, each credited 0.8: (2 + 1.6) / 4 = 90 %.
    p = point(inp, 0.8)
    assert p["accuracy"] == 90.0 and p["estimated"] is True


def test_curve_has_both_ends_and_intervals():
    pts = curve(_inputs())
    assert pts[0]["local_share"] == 1.0 and pts[-1]["local_share"] == 0.0
    assert all(p["ci_low"] <= p["accuracy"] <= p["ci_high"] for p in pts)
    assert len(pts) == 6  # 0, the four confidences, all-API


def test_choose_threshold_cheapest_meeting_target():
    inp = _inputs()
    # Matching the API (75 %) needs q2 escalated: thresholds 0.8 or 0.9 do; 0.8 keeps more local (cheaper).
    chosen = choose_threshold(inp, "accuracy>=baseline", None)
    assert (chosen["threshold"], chosen["accuracy"], chosen["usd_per_1k_queries"], chosen["met"]) == (
        0.8,
        75.0,
        6.0,
        True,
    )
    # Escalating at most 50 %: the most accurate such point escalates q2, q3 (t=0.8, 75 %); at most 25 %
    # nothing beats all-local's 50 %, so the cheapest of the ties (t=0, all local) wins.
    assert choose_threshold(inp, None, 0.5)["threshold"] == 0.8
    assert choose_threshold(inp, None, 0.25)["threshold"] == 0.0
    # An unreachable target falls back to all-API and says so.
    assert choose_threshold(inp, "accuracy>=99", None)["met"] is False


@pytest.mark.parametrize("target, esc", [(None, None), ("accuracy>=baseline-1", 0.2), ("f1>=3", None), (None, 1.5)])
def test_bad_targets(target, esc):
    with pytest.raises(OfframpError):
        choose_threshold(_inputs(), target, esc)


def test_threshold_is_chosen_on_calibration_and_scored_on_test():
    rng = np.random.default_rng(1)
    n = 400
    gold = rng.integers(0, 4, n)
    conf = rng.random(n)
    local = np.where(conf > 0.4, gold, (gold + 1) % 4)  # sure -> right, unsure -> wrong
    api = np.where(rng.random(n) < 0.9, gold, (gold + 2) % 4)
    inp = CascadeInputs(gold, local, conf, api, None, 0.001, 0.01)
    calib, test = calibration_split(gold)
    assert not set(calib) & set(test) and len(calib) + len(test) == n
    res = evaluate(inp, target="accuracy>=baseline-1")
    assert res["chosen_on_calibration"]["met"]
    assert 0.3 < res["chosen_on_calibration"]["threshold"] < 0.6
    assert res["on_test"]["accuracy"] >= res["all_api_test"]["accuracy"] - 5
    assert res["on_test"]["usd_per_1k_queries"] < res["all_api_test"]["usd_per_1k_queries"]


def test_confidence_must_be_a_probability():
    with pytest.raises(OfframpError, match="probabilities"):
        CascadeInputs(GOLD, LOCAL, CONF * 2, API, None, 0.001, 0.01)


# ---- `offramp cascade` on real answers: the tiny model through lm-eval vs a fake API (a real HTTP server) ----

_API_WRONG = 5  # the fake API answers all but 5 of the 24 queries right


@pytest.fixture(scope="module")
def tiny_vs_api(tmp_path_factory, tiny_model):
    import subprocess
    import sys

    from fake_openai import FakeOpenAI
    from test_eval_run import banking77_subset, wrong_for

    from offramp.reports import write_report

    d = tmp_path_factory.mktemp("cascade")
    gold = banking77_subset(d / "task.jsonl", n_labels=6, per_label=4)
    with FakeOpenAI(wrong_for(gold, _API_WRONG), api_key="sk-test") as api:
        env = {**os.environ, "OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": "sk-test"}
        args = ["eval", "--task", str(d / "task.jsonl"), "--system", f"tiny={tiny_model}"]
        args += ["--system", "api=openai:gpt-4o-mini", "--no-cache", "--out", str(d / "eval")]
        res = subprocess.run([sys.executable, "-m", "offramp", *args], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
    # a breakeven report with round $ per request (the fields BreakevenReport pins, as `offramp breakeven` writes)
    costs = {"self_hosted": {"cost": {"per_request_usd": {"value": 0.0001}}}, "summary": {}}
    costs["api"] = {"name": "gpt-4o-mini", "cost": {"per_request_usd": {"value": 0.002}}}
    costs["api"]["list_prices"] = {"input_per_1m": {"value": 0.15}}
    costs |= {"break_even": {"volume": 1000.0}, "decision": {"verdict": "GO", "reasons": []}}
    write_report(d / "breakeven_report.json", "breakeven", costs)
    return d, gold


def _by_hand(report: dict, threshold: float, idx: list[int]) -> float:
    cand = next(s for s in report["systems"] if s["name"] == "tiny")
    api = next(s for s in report["systems"] if s["name"] == "api")
    right = 0
    for i in idx:
        gold = report["queries"][i]["gold"]
        local = cand["queries"][i][cand["mode"]]
        answer = local["label"] if local["prob"] >= threshold else api["queries"][i][api["mode"]]["label"]
        right += answer == gold
    return 100 * right / len(idx)


def test_cascade_cli_on_real_answers(cli, tiny_vs_api, tmp_path):
    d, _ = tiny_vs_api
    args = ["--eval", str(d / "eval/eval_report.json"), "--breakeven", str(d / "breakeven_report.json")]
    res = cli("cascade", *args, "--candidate", "tiny", "--baseline", "api", "--max-escalation", "0.5",
              "--out", str(tmp_path / "c"))  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((tmp_path / "c/cascade_report.json").read_text())
    assert (tmp_path / "c/cascade.png").stat().st_size > 10_000
    evald = json.loads((d / "eval/eval_report.json").read_text())
    chosen, test_idx = rep["on_test"], rep["test_index"]
    assert rep["n_test"] == len(test_idx) == 12 and rep["estimated"] is False
    assert 1 - rep["chosen_on_calibration"]["local_share"] <= 0.5 + 1e-9
    # the held-out point, recomputed from the per-query answers
    assert chosen["accuracy"] == pytest.approx(_by_hand(evald, chosen["threshold"], test_idx), abs=0.01)
    assert chosen["usd_per_1k_queries"] == pytest.approx(1000 * (0.0001 + (1 - chosen["local_share"]) * 0.002))
    api_right = 100 * sum(evald["queries"][i]["gold"] == next(s for s in evald["systems"] if s["name"] == "api")[
        "queries"][i]["constrained"]["label"] for i in test_idx) / len(test_idx)  # fmt: skip
    assert rep["all_api_test"]["accuracy"] == pytest.approx(api_right, abs=0.01)
    assert rep["all_api_test"]["usd_per_1k_queries"] == pytest.approx(2.0)  # the API alone: no local server
    assert rep["curve_test"][0]["local_share"] == 1.0 and rep["curve_test"][-1]["local_share"] == 0.0
    assert "keeps" in res.stdout and rep["escalation_share"] == pytest.approx(1 - chosen["local_share"])


def test_cascade_cli_with_a_cited_baseline_is_an_estimate(cli, tiny_vs_api, tmp_path):
    d, _ = tiny_vs_api
    report = json.loads((d / "eval/eval_report.json").read_text())
    api = next(s for s in report["systems"] if s["name"] == "api")
    api.clear()
    api.update(name="api", source="cited", accuracy={"value": 80.0, "ci_low": 80.0, "ci_high": 80.0})
    (tmp_path / "eval_report.json").write_text(json.dumps(report))
    args = ["--eval", str(tmp_path / "eval_report.json"), "--breakeven", str(d / "breakeven_report.json")]
    res = cli("cascade", *args, "--target", "accuracy>=baseline-1", "--out", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr[-2000:]
    rep = json.loads((tmp_path / "c/cascade_report.json").read_text())
    assert rep["estimated"] is True and "optimistic" in rep["assumption"]
    assert rep["all_api_test"]["accuracy"] == pytest.approx(80.0)


@pytest.mark.parametrize(
    "change, message",
    [
        ("no_probs", "no per-answer log-probabilities"),
        ("no_breakeven", "no such file"),
        ("bad_target", "malformed target"),
        ("unknown_candidate", "is not a system of the eval report"),
    ],
)
def test_cascade_cli_bad_input(cli, tiny_vs_api, tmp_path, change, message):
    d, _ = tiny_vs_api
    report = json.loads((d / "eval/eval_report.json").read_text())
    if change == "no_probs":
        for q in report["systems"][0]["queries"]:
            q["constrained"].pop("prob", None)
    (tmp_path / "e.json").write_text(json.dumps(report))
    args = ["cascade", "--eval", str(tmp_path / "e.json"), "--breakeven", str(d / "breakeven_report.json")]
    args += ["--candidate", "nope" if change == "unknown_candidate" else "tiny", "--baseline", "api"]
    args += ["--target", "accuracy>>1"] if change == "bad_target" else ["--max-escalation", "0.3"]
    if change == "no_breakeven":
        args[args.index("--breakeven") + 1] = str(tmp_path / "missing.json")
    res = cli(*args, "--out", str(tmp_path / "c"))
    assert res.returncode != 0 and message in res.stderr
    assert not (tmp_path / "c").exists()

import numpy as np
import pytest
from offramp.evals.cascade import ALL_API, CascadeInputs, calibration_split, choose_threshold, curve, evaluate, point

from offramp.errors import OfframpError

# 4 queries. Local model: right on q0, q1 (confident), wrong on q2, q3 (unsure). API: right on q0, q1, q2.
GOLD = np.array([0, 1, 2, 3])
LOCAL = np.array([0, 1, 9, 9])
CONF = np.array([0.9, 0.8, 0.3, 0.2])
API = np.array([0, 1, 2, 9])
# $ per query: local 0.001, API 0.01


def _inputs(api=API, api_accuracy=None):
    return CascadeInputs(GOLD, LOCAL, CONF, api, api_accuracy, 0.001, 0.01)


def test_points_by_hand():
    inp = _inputs()
    # t=0.5: q0, q1 local (both right); q2 to the API (right), q3 to the API (wrong): 3/4 = 75 %.
    # cost: 0.5 * 0.001 + 0.5 * 0.01 = 0.0055 per query = 5.5 $ per 1k queries.
    p = point(inp, 0.5)
    assert (p["local_share"], p["accuracy"], p["usd_per_1k_queries"]) == (0.5, 75.0, 5.5)
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
        5.5,
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

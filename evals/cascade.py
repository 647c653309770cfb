"""The offline cascade: the local model answers when it is sure enough, the API answers the rest.

Confidence of a local answer = P(answer | prompt) = exp(sum of the answer tokens' log-probabilities). Where the
answers come from matters: vLLM applies the label-set grammar mask before it computes logprobs, so through a vLLM
endpoint with constrained answers each step is renormalised over the allowed tokens (forced tokens score 0) —
the very quantity the online router (offramp.serve.cascade) sees, since it sends the same request. lm-eval's
log-likelihood scoring of a local checkpoint gives the unrenormalised P(label) instead (for one "Paris" answer:
0.0017 vs 0.48 through vLLM). So pick a threshold for `offramp serve --cascade` from a candidate evaluated through
its vLLM endpoint (as `offramp run` does); a curve from a local checkpoint ranks queries but its threshold does
not transfer.

A threshold is chosen on a calibration split and reported on a disjoint test split: no threshold is scored on
the data it was chosen on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offramp.errors import OfframpError
from offramp.expressions import parse_target

ALL_API = 1.01  # a threshold no confidence reaches: everything escalates


@dataclass(frozen=True)
class CascadeInputs:
    gold: np.ndarray  # label index per query
    local_pred: np.ndarray
    local_conf: np.ndarray  # in [0, 1]
    api_pred: np.ndarray | None  # per-query API answers; None when the baseline is only a cited score
    api_accuracy: float | None  # percent; used (as an estimate) when api_pred is None
    local_cost_per_query: float  # $
    api_cost_per_query: float  # $

    def __post_init__(self) -> None:
        if self.api_pred is None and self.api_accuracy is None:
            raise OfframpError("the cascade needs the API's per-query answers or at least its (cited) accuracy")
        if np.any((self.local_conf < 0) | (self.local_conf > 1)):
            raise OfframpError("local confidences must be probabilities in [0, 1]")

    @property
    def estimated(self) -> bool:
        return self.api_pred is None

    def subset(self, idx: np.ndarray) -> CascadeInputs:
        return CascadeInputs(
            self.gold[idx],
            self.local_pred[idx],
            self.local_conf[idx],
            None if self.api_pred is None else self.api_pred[idx],
            self.api_accuracy,
            self.local_cost_per_query,
            self.api_cost_per_query,
        )


def _correct(inp: CascadeInputs, local: np.ndarray) -> np.ndarray:
    """Per query: 1/0 when known; for escalated queries with only a cited score, its accuracy as a probability."""
    local_ok = (inp.local_pred == inp.gold).astype(float)
    api_ok = (
        (inp.api_pred == inp.gold).astype(float)
        if inp.api_pred is not None
        else np.full(len(inp.gold), inp.api_accuracy / 100)
    )
    return np.where(local, local_ok, api_ok)


def point(inp: CascadeInputs, threshold: float, *, boot: np.ndarray | None = None) -> dict:
    local = inp.local_conf >= threshold
    correct = _correct(inp, local)
    share = float(local.mean())
    # The local model answers every query first (that is how the router decides); the escalated share is also
    # paid at the API's price. The all-API end point is the API alone, with no local server to pay for.
    local_cost = 0.0 if threshold >= ALL_API else inp.local_cost_per_query
    cost = local_cost + (1 - share) * inp.api_cost_per_query
    out = {
        "threshold": round(float(threshold), 6),
        "local_share": round(share, 4),
        "accuracy": round(float(correct.mean() * 100), 2),
        "usd_per_1k_queries": round(cost * 1000, 6),
        "estimated": inp.estimated,
    }
    if boot is not None:
        samples = correct[boot].mean(axis=1) * 100
        out["ci_low"], out["ci_high"] = (round(float(x), 2) for x in np.percentile(samples, [2.5, 97.5]))
    return out


def curve(inp: CascadeInputs, *, seed: int = 0, iters: int = 1000) -> list[dict]:
    """One point per distinct confidence, plus both ends: all-local (threshold 0) and all-API."""
    boot = np.random.default_rng(seed).integers(0, len(inp.gold), size=(iters, len(inp.gold)))
    thresholds = sorted({0.0, ALL_API, *map(float, inp.local_conf)})
    return [point(inp, t, boot=boot) for t in thresholds]


def choose_threshold(calib: CascadeInputs, target: str | None, max_escalation: float | None) -> dict:
    """On the calibration split: the cheapest threshold (most traffic kept local) meeting an accuracy target, or
    the most accurate one within an escalation budget."""
    kind, value, max_esc = parse_target(target, max_escalation)
    api_only = point(calib, ALL_API)["accuracy"]
    candidates = sorted(curve(calib, iters=1), key=lambda p: p["usd_per_1k_queries"])
    if kind == "escalation":
        # The most accurate point within the escalation budget; the cheaper one on a tie.
        allowed = [p for p in candidates if 1 - p["local_share"] <= max_esc + 1e-12]
        best = max(allowed, key=lambda p: (p["accuracy"], -p["usd_per_1k_queries"]))
        return {**best, "met": True}
    for p in candidates:
        if kind == "relative" and p["accuracy"] >= api_only + value - 1e-9:
            return {**p, "met": True}
        if kind == "absolute" and p["accuracy"] >= value - 1e-9:
            return {**p, "met": True}
    return {**point(calib, ALL_API), "met": False}


def calibration_split(gold: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half of each label's queries for calibration, the other half for the test; deterministic by seed."""
    rng = np.random.default_rng(seed)
    calib, test = [], []
    for label in np.unique(gold):
        idx = rng.permutation(np.flatnonzero(gold == label))
        k = len(idx) // 2
        calib.extend(idx[:k])
        test.extend(idx[k:])
    if not calib or not test:
        raise OfframpError("too few queries to split into calibration and test (need at least 2 per label)")
    return np.array(sorted(calib)), np.array(sorted(test))


def evaluate(
    inp: CascadeInputs, *, target: str | None = None, max_escalation: float | None = None, seed: int = 0
) -> dict:
    calib_idx, test_idx = calibration_split(inp.gold, seed)
    calib, test = inp.subset(calib_idx), inp.subset(test_idx)
    chosen = choose_threshold(calib, target, max_escalation)
    boot = np.random.default_rng(seed).integers(0, len(test.gold), size=(1000, len(test.gold)))
    held_out = point(test, chosen["threshold"], boot=boot)
    result = {
        "confidence": "P(label | prompt) = exp(sum of the answer tokens' log-probabilities)",
        "target": target if target is not None else f"escalation<={max_escalation}",
        "n_calibration": len(calib_idx),
        "n_test": len(test_idx),
        "test_index": [int(i) for i in test_idx],  # positions in the eval's query list, for auditing the split
        "chosen_on_calibration": chosen,
        "on_test": held_out,
        "all_local_test": point(test, 0.0, boot=boot),
        "all_api_test": point(test, ALL_API, boot=boot),
        "curve_test": curve(test, seed=seed),
        "estimated": inp.estimated,
    }
    if inp.estimated:
        result["assumption"] = (
            "no per-query API answers: escalated queries are credited with the API's cited accuracy. Queries the "
            "small model finds hard are likely harder for the API too, so this estimate is optimistic."
        )
    return result

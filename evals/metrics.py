"""Scoring: answer normalisation, accuracy / macro-F1 with seeded 95 % bootstrap intervals, per-label errors.

Numbers are in percent (0-100), so a gate reads "accuracy >= baseline - 2" as two points.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

INVALID = -1  # an answer outside the label set
BOOTSTRAP_ITERS = 2000


def normalise(text: str) -> str:
    """Case, surrounding quotes/punctuation and the separators `_`, `-`, space do not count."""
    text = text.strip().casefold()
    text = re.sub(r"[\s_\-]+", " ", text)
    return text.strip(" \t\"'`.,;:!?*()[]{}")


def label_index(labels: Sequence[str]) -> dict[str, int]:
    return {normalise(label): i for i, label in enumerate(labels)}


def parse_answer(raw: str | None, index: dict[str, int]) -> int:
    """Map a free-text (or JSON `{"label": …}`) answer to a label index; INVALID when it names no label."""
    if raw is None:
        return INVALID
    text = raw.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            if isinstance(obj, dict) and isinstance(obj.get("label"), str):
                text = obj["label"]
        except ValueError:
            pass
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    return index.get(normalise(first_line), INVALID)


def macro_f1(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> float:
    """Macro-F1 over the labels present in `gold`; an invalid answer is a miss for its gold label only."""
    valid = pred >= 0
    tp = np.bincount(gold[(pred == gold)], minlength=n_labels)
    pred_count = np.bincount(pred[valid], minlength=n_labels)
    gold_count = np.bincount(gold, minlength=n_labels)
    present = gold_count > 0
    denom = pred_count + gold_count
    f1 = np.divide(2 * tp, denom, out=np.zeros(n_labels, dtype=float), where=denom > 0)
    return float(f1[present].mean() * 100)


def bootstrap_indices(n: int, iters: int = BOOTSTRAP_ITERS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(iters, n))


def interval(values: np.ndarray, point: float) -> dict[str, float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return {"value": round(point, 2), "ci_low": round(float(low), 2), "ci_high": round(float(high), 2)}


def score(gold: Sequence[int], pred: Sequence[int], n_labels: int, *, seed: int = 0) -> dict:
    """Accuracy and macro-F1 with percentile bootstrap intervals (queries resampled with replacement)."""
    g, p = np.asarray(gold), np.asarray(pred)
    correct = (g == p).astype(float)
    idx = bootstrap_indices(len(g), seed=seed)
    acc_samples = correct[idx].mean(axis=1) * 100
    f1_samples = np.array([macro_f1(g[i], p[i], n_labels) for i in idx])
    return {
        "accuracy": interval(acc_samples, float(correct.mean() * 100)),
        "macro_f1": interval(f1_samples, macro_f1(g, p, n_labels)),
        "invalid_rate": round(float((p == INVALID).mean() * 100), 2),
    }


def paired_difference(gold: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], *, seed: int = 0) -> dict:
    """Accuracy of A minus accuracy of B on the same queries, with a paired bootstrap interval (points)."""
    g = np.asarray(gold)
    diff = (np.asarray(pred_a) == g).astype(float) - (np.asarray(pred_b) == g).astype(float)
    idx = bootstrap_indices(len(g), seed=seed)
    return interval(diff[idx].mean(axis=1) * 100, float(diff.mean() * 100))


def per_label_errors(gold: Sequence[int], pred: Sequence[int], labels: Sequence[str], top: int = 3) -> list[dict]:
    """Per gold label: support, errors, and the answers it was most often mistaken for; worst first."""
    confusions: dict[int, Counter] = defaultdict(Counter)
    support = Counter(gold)
    for g, p in zip(gold, pred, strict=True):
        if g != p:
            confusions[g]["<invalid>" if p == INVALID else labels[p]] += 1
    rows = [
        {
            "label": labels[g],
            "support": support[g],
            "errors": sum(confusions[g].values()),
            "confused_with": dict(confusions[g].most_common(top)),
        }
        for g in support
    ]
    return sorted(rows, key=lambda r: (-r["errors"] / r["support"], r["label"]))


def agreement(pred_a: Sequence[int], pred_b: Sequence[int]) -> float:
    """Share (percent) of queries where both systems gave the same valid label."""
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    return round(float(((a == b) & (a != INVALID)).mean() * 100), 2)

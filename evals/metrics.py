"""Scoring: answer normalisation, accuracy / macro-F1 with seeded 95 % bootstrap intervals, per-label errors.

Numbers are in percent (0-100), so a gate reads "accuracy >= baseline - 2" as two points.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

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


# ---- generation tasks: free text scored against a reference --------------------------------------------------

# exact_match and rougeL are means of per-query scores; bleu and chrf are corpus-level (n-gram counts summed over
# the corpus first), so their bootstrap recomputes the corpus score on each resample from per-query statistics.
GEN_METRICS = ("chrf", "bleu", "rougeL", "exact_match")
CORPUS_METRICS = ("chrf", "bleu")
DEFAULT_GEN_METRIC = "chrf"


def _collapse(text: str | None) -> str:
    return " ".join((text or "").split())


def exact_match_scores(preds: Sequence[str | None], refs: Sequence[str]) -> np.ndarray:
    """Per query 100 or 0: lm-eval's `exact_match` ignoring case, punctuation and runs of whitespace."""
    from lm_eval.api.metrics import exact_match_hf_evaluate

    return np.array(
        [
            100.0
            * exact_match_hf_evaluate([_collapse(p)], [_collapse(r)], ignore_case=True, ignore_punctuation=True)[
                "exact_match"
            ]
            for p, r in zip(preds, refs, strict=True)
        ]
    )


def rouge_l_scores(preds: Sequence[str | None], refs: Sequence[str]) -> np.ndarray:
    """Per query ROUGE-L F-measure (0-100), rouge_score with the Porter stemmer as lm-eval's summarisation tasks."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array([100.0 * scorer.score(r, p or "")["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)])


def _sacrebleu(metric: str):
    from sacrebleu.metrics import BLEU, CHRF

    # the defaults of sacrebleu.corpus_bleu / corpus_chrf, which lm-eval's `bleu` / `chrf` aggregations call
    return {"bleu": BLEU, "chrf": CHRF}[metric]()


def _segment_stats(metric: str, hyps: list[str], refs: Sequence[str]) -> list[list[float]]:
    """Per-segment statistics that sum to the corpus score's. BLEU's are public (a sentence score's lengths and n-gram
    counts). chrF has no public API for them: sacrebleu's own paired bootstrap (sacrebleu.significance) calls the
    metric's private `_extract_corpus_statistics` / `_compute_score_from_stats`, and so do we, for chrF only. The
    runtime lock pins sacrebleu; tests/test_eval_units.py::test_sacrebleu_private_stats_api_is_still_there fails,
    naming them, when an upgrade changes them."""
    if metric == "chrf":
        return _sacrebleu("chrf")._extract_corpus_statistics(hyps, [list(refs)])
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)  # the counts do not depend on it; it only silences the sentence-level warning
    scores = [bleu.sentence_score(h, [r]) for h, r in zip(hyps, refs, strict=True)]
    return [[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in scores]


def _score_from_stats(metric: str, scorer: Any, summed: list[int]) -> float:
    if metric == "chrf":
        return scorer._compute_score_from_stats(summed).score
    n = scorer.max_ngram_order
    sys_len, ref_len, correct, total = summed[0], summed[1], summed[2 : 2 + n], summed[2 + n :]
    args = {"smooth_method": scorer.smooth_method, "smooth_value": scorer.smooth_value}
    return scorer.compute_bleu(correct, total, sys_len, ref_len, **args, max_ngram_order=n).score


def query_stats(metric: str, preds: Sequence[str | None], refs: Sequence[str]) -> np.ndarray:
    """(n_queries, k) statistics a resample is scored from: a per-query score (k=1) for mean metrics, sacrebleu's
    per-segment n-gram counts for corpus metrics (the same statistics sacrebleu's paired bootstrap sums)."""
    hyps = [p or "" for p in preds]
    if metric == "exact_match":
        return exact_match_scores(hyps, refs)[:, None]
    if metric == "rougeL":
        return rouge_l_scores(hyps, refs)[:, None]
    return np.asarray(_segment_stats(metric, hyps, refs), dtype=float)


def resampled_scores(metric: str, stats: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The metric on each bootstrap resample (rows of `idx`)."""
    if metric not in CORPUS_METRICS:
        return stats[idx, 0].mean(axis=1)
    scorer = _sacrebleu(metric)
    sums = stats[idx].sum(axis=1)
    return np.array([_score_from_stats(metric, scorer, s.astype(int).tolist()) for s in sums])


def corpus_score(metric: str, preds: Sequence[str | None], refs: Sequence[str]) -> float:
    """The point estimate, by lm-eval's own implementation where it has one (its `bleu` / `chrf` aggregations)."""
    hyps = [p or "" for p in preds]
    if metric in CORPUS_METRICS:
        from lm_eval.api.registry import get_aggregation

        return float(get_aggregation(metric)(list(zip(refs, hyps, strict=True))))
    return float(query_stats(metric, hyps, refs)[:, 0].mean())


def sentence_scores(metric: str, preds: Sequence[str | None], refs: Sequence[str]) -> list[float]:
    """Per-query scores for the report (for corpus metrics the sentence-level variant, to find the worst answers)."""
    hyps = [p or "" for p in preds]
    if metric not in CORPUS_METRICS:
        return [round(float(x), 2) for x in query_stats(metric, hyps, refs)[:, 0]]
    from sacrebleu.metrics import BLEU, CHRF

    scorer = BLEU(effective_order=True) if metric == "bleu" else CHRF()
    return [round(scorer.sentence_score(h, [r]).score, 2) for h, r in zip(hyps, refs, strict=True)]


def score_generation(metric: str, preds: Sequence[str | None], refs: Sequence[str], *, seed: int = 0) -> dict:
    """The chosen metric and normalised exact match (0-100) with percentile bootstrap intervals."""
    idx = bootstrap_indices(len(refs), seed=seed)
    out = {}
    for name in dict.fromkeys((metric, "exact_match")):
        stats = query_stats(name, preds, refs)
        out[name] = interval(resampled_scores(name, stats, idx), corpus_score(name, preds, refs))
    out["empty_rate"] = round(float(np.mean([not _collapse(p) for p in preds]) * 100), 2)
    return out


def paired_generation_difference(
    metric: str, preds_a: Sequence[str | None], preds_b: Sequence[str | None], refs: Sequence[str], *, seed: int = 0
) -> dict:
    """metric(A) - metric(B) on the same queries, with a paired bootstrap interval (both resampled with one index)."""
    idx = bootstrap_indices(len(refs), seed=seed)
    stats_a, stats_b = query_stats(metric, preds_a, refs), query_stats(metric, preds_b, refs)
    diffs = resampled_scores(metric, stats_a, idx) - resampled_scores(metric, stats_b, idx)
    return interval(diffs, corpus_score(metric, preds_a, refs) - corpus_score(metric, preds_b, refs))


def text_agreement(preds_a: Sequence[str | None], preds_b: Sequence[str | None]) -> float:
    """Share (percent) of queries where both systems gave the same non-empty text, up to case and whitespace."""
    same = [
        bool(_collapse(a)) and _collapse(a).casefold() == _collapse(b).casefold()
        for a, b in zip(preds_a, preds_b, strict=True)
    ]
    return round(float(np.mean(same) * 100), 2) if same else 0.0

"""What a quantized checkpoint is checked on after it is saved and reloaded, per model head.

- A causal LM (`TextCheck`): perplexity over held-out prompt + answer text, and one greedy answer.
- A classifier (`LabelCheck`): every label's probability on held-out prompts, rendered as served; accuracy against
  their labels and agreement with the original's label. Perplexity means nothing for a label head.

Each check scores the original, the in-memory quantized model where the method has one, and the reloaded
checkpoint; `report` raises OfframpError (nothing is written) when the reloaded checkpoint fails, else returns the
report's quality fields.
"""

from __future__ import annotations

import math
from typing import Any

from offramp.data import check_record_labels, record_label
from offramp.errors import OfframpError
from offramp.quantize.calib import TaskText, render, render_prompt
from offramp.quantize.measure import greedy_answer, label_probs, perplexity
from offramp.store import classifier_labels

LABELS_SOURCE = "the classifier's labels (config.json id2label)"


class TextCheck:
    head = "lm"

    def __init__(self, tokenizer: Any, task: TaskText, *, max_ppl_ratio: float) -> None:
        self.tokenizer = tokenizer
        self.calib_texts = [render(tokenizer, r) for r in task.calib]
        self.heldout_texts = [render(tokenizer, r) for r in task.heldout]
        self.probe = render_prompt(tokenizer, task.heldout[0])
        self.max_ppl_ratio = max_ppl_ratio
        self.heldout_text = "chat-templated prompt + answer"

    def score(self, model: Any, *, answer: bool = True) -> dict:
        ppl = perplexity(model, self.tokenizer, self.heldout_texts)
        return {"perplexity": ppl, "answer": greedy_answer(model, self.tokenizer, self.probe) if answer else None}

    def report(self, reloaded: dict, base: dict, in_memory: dict | None) -> dict:
        ppl, base_ppl, answer, base_answer = (
            reloaded["perplexity"],
            base["perplexity"],
            reloaded["answer"],
            base["answer"],
        )
        in_memory_ppl = in_memory["perplexity"] if in_memory else None
        if not math.isfinite(ppl) or ppl > self.max_ppl_ratio * base_ppl:
            raise OfframpError(
                f"reload check failed: the saved checkpoint scores perplexity {ppl:.3g} vs {base_ppl:.3g} for the "
                f"original (limit {self.max_ppl_ratio}x); not writing it"
            )
        if in_memory_ppl is not None and abs(ppl / in_memory_ppl - 1) > 0.01:
            raise OfframpError(
                f"reload check failed: perplexity {ppl:.4g} after save+reload vs {in_memory_ppl:.4g} in memory: "
                "the saved checkpoint does not reproduce the quantized model; not writing it"
            )
        if base_answer and not answer:
            raise OfframpError(
                f"reload check failed: the reloaded checkpoint gives an empty greedy answer (original: "
                f"{base_answer!r}); not writing it"
            )
        check = {
            "passed": True,
            "max_ppl_ratio": self.max_ppl_ratio,
            "in_memory_perplexity": in_memory_ppl,
            "what": "reloaded from disk; perplexity finite and within the limit of the original's"
            + ("; equal to the in-memory quantized model's within 1 %" if in_memory_ppl is not None else "")
            + "; a non-empty greedy answer where the original gives one",
        }
        return {
            "perplexity": ppl,
            "base_perplexity": base_ppl,
            "perplexity_change_pct": round(100 * (ppl / base_ppl - 1), 2),
            "greedy_answer": answer,
            "base_greedy_answer": base_answer,
            "greedy_matches_base": answer == base_answer,
            "reload_check": check,
        }


def checkpoint_labels(src: str) -> list[str]:
    labels = classifier_labels(src)
    if not labels:
        raise OfframpError(f"{src}: a sequence-classification checkpoint without id2label in config.json")
    return labels


def check_heldout_labels(src: str, task: TaskText) -> None:
    """A classifier is scored against its held-out records' labels: each must be one of the checkpoint's."""
    check_record_labels(task.heldout, checkpoint_labels(src), task.heldout_source, LABELS_SOURCE)


class LabelCheck:
    head = "classify"

    def __init__(self, tokenizer: Any, task: TaskText, labels: list[str], *, min_agreement: float) -> None:
        check_record_labels(task.heldout, labels, task.heldout_source, LABELS_SOURCE)
        self.tokenizer = tokenizer
        # a classifier sees the prompt only (as /classify renders it): calibrate and score on that
        self.calib_texts = [render_prompt(tokenizer, r) for r in task.calib]
        self.prompts = [render_prompt(tokenizer, r) for r in task.heldout]
        self.gold = [labels.index(record_label(r)) for r in task.heldout]
        self.min_agreement = min_agreement
        self.heldout_text = "chat-templated prompt (the classifier's input), scored against its label"

    def score(self, model: Any, *, answer: bool = True) -> dict:
        probs = label_probs(model, self.tokenizer, self.prompts)
        picked = [max(range(len(p)), key=p.__getitem__) for p in probs]
        return {"probs": probs, "picked": picked, "accuracy": _share(picked, self.gold)}

    def report(self, reloaded: dict, base: dict, in_memory: dict | None) -> dict:
        flat = [x for p in reloaded["probs"] for x in p]
        if not all(math.isfinite(x) for x in flat):
            raise OfframpError(
                "reload check failed: the saved classifier gives non-finite probabilities; not writing it"
            )
        agreement = _share(reloaded["picked"], base["picked"])
        if agreement < self.min_agreement:
            raise OfframpError(
                f"reload check failed: the saved classifier picks the original's label on {100 * agreement:.1f} % of "
                f"{len(self.prompts)} held-out prompts (limit {100 * self.min_agreement:.0f} %); not writing it"
            )
        if in_memory is not None and _share(reloaded["picked"], in_memory["picked"]) < 0.99:
            raise OfframpError(
                "reload check failed: after save+reload the classifier's labels differ from the in-memory quantized "
                "model's on more than 1 % of the held-out prompts; not writing it"
            )
        pairs = zip(reloaded["probs"], base["probs"], strict=True)
        diffs = [abs(a - b) for p, q in pairs for a, b in zip(p, q, strict=True)]
        return {
            "accuracy": round(reloaded["accuracy"], 4),
            "base_accuracy": round(base["accuracy"], 4),
            "accuracy_change_pts": round(100 * (reloaded["accuracy"] - base["accuracy"]), 2),
            "label_agreement": round(agreement, 4),
            "max_prob_diff": round(max(diffs), 4),
            "mean_prob_diff": round(sum(diffs) / len(diffs), 5),
            "reload_check": {
                "passed": True,
                "min_agreement": self.min_agreement,
                "what": "reloaded from disk; finite probabilities; the original's label on at least min_agreement "
                "of the held-out prompts"
                + ("; the in-memory quantized model's label on 99 %" if in_memory is not None else ""),
            },
        }


def _share(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)

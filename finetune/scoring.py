"""Quick classification accuracy of a (fine-tuned) model, for the finetune measurement scripts.

Two answers per query:
- constrained: the label whose tokens (after the chat template's assistant prefix, end-of-turn included) have the
  highest log-likelihood given the prompt — the argmax over the label set, as a constrained decoder would pick;
- free: greedy generation, exact match against the gold label.

The official evaluation (lm-eval, intervals, the gate) lives in offramp.evals; this is the training-time check.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class LabelTrie:
    """Label token sequences as a prefix tree: prefix -> next tokens, and complete sequence -> label index."""

    children: dict[tuple[int, ...], set[int]]
    leaves: dict[tuple[int, ...], int]

    @classmethod
    def build(cls, sequences: list[list[int]]) -> LabelTrie:
        children: dict[tuple[int, ...], set[int]] = {}
        leaves: dict[tuple[int, ...], int] = {}
        for idx, seq in enumerate(sequences):
            for k in range(len(seq)):
                children.setdefault(tuple(seq[:k]), set()).add(seq[k])
            leaves[tuple(seq)] = idx
        return cls(children, leaves)


def label_token_ids(tokenizer: Any, labels: list[str]) -> list[list[int]]:
    """Each label's answer tokens as the model must produce them: the label then the end-of-turn token."""
    end = tokenizer.eos_token or ""
    return [tokenizer(label + end, add_special_tokens=False)["input_ids"] for label in labels]


def prompt_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def classify_by_label_likelihood(
    model: Any, tokenizer: Any, prompts: list[list[dict]], labels: list[str], expand_batch: int = 16
) -> list[tuple[str, float]]:
    """For each prompt, the label with the highest total log-likelihood, and that log-likelihood.

    Exact argmax over all labels, found by best-first search over the label token trie: token log-probs are <= 0,
    so a prefix's score bounds every completion of it, and the first complete label taken off the heap beats all
    others. A confident model expands a handful of trie nodes instead of scoring every label. The prompt runs
    once; each round expands up to `expand_batch` of the best prefixes in one batched forward on its KV cache.
    """
    import torch

    trie = LabelTrie.build(label_token_ids(tokenizer, labels))
    device = next(model.parameters()).device
    results = []
    with torch.inference_mode():
        for messages in prompts:
            ids = torch.tensor([prompt_ids(tokenizer, messages)], device=device)
            out = model(input_ids=ids, use_cache=True)
            prompt_cache, plen = out.past_key_values, ids.shape[1]
            heap: list[tuple[float, tuple[int, ...]]] = []
            first = torch.log_softmax(out.logits[0, -1].float(), -1)
            for tok in trie.children[()]:
                heapq.heappush(heap, (-first[tok].item(), (tok,)))
            while heap[0][1] not in trie.leaves:
                batch = []
                while heap and len(batch) < expand_batch and heap[0][1] not in trie.leaves:
                    batch.append(heapq.heappop(heap))
                for (neg, prefix), logp in zip(batch, _next_logprobs(model, prompt_cache, plen, batch), strict=True):
                    for tok in trie.children[prefix]:
                        heapq.heappush(heap, (neg - logp[tok].item(), (*prefix, tok)))
            neg, best = heap[0]
            results.append((labels[trie.leaves[best]], -neg))
    return results


def _next_logprobs(model: Any, prompt_cache: Any, plen: int, batch: list[tuple[float, tuple[int, ...]]]) -> Any:
    """Next-token log-probs after prompt + each prefix: the prefixes right-padded, on a copy of the prompt cache."""
    import copy

    import torch

    device = next(model.parameters()).device
    longest = max(len(p) for _, p in batch)
    ids = torch.zeros((len(batch), longest), dtype=torch.long, device=device)
    mask = torch.zeros((len(batch), plen + longest), dtype=torch.long, device=device)
    mask[:, :plen] = 1
    for row, (_, prefix) in enumerate(batch):
        ids[row, : len(prefix)] = torch.tensor(prefix)
        mask[row, plen : plen + len(prefix)] = 1
    cache = copy.deepcopy(prompt_cache)
    cache.batch_repeat_interleave(len(batch))
    logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
    last = torch.tensor([len(p) - 1 for _, p in batch], device=device)
    return torch.log_softmax(logits[torch.arange(len(batch), device=device), last].float(), -1)


def generate_answers(
    model: Any, tokenizer: Any, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy free generation, batched with left padding."""
    import torch

    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                for m in prompts[i : i + batch_size]
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 0.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_accuracy(
    model: Any, tokenizer: Any, records: list[dict], labels: list[str], *, free: bool = True
) -> dict[str, Any]:
    """Constrained (label log-likelihood argmax) and, optionally, free-generation accuracy on chat records."""
    from offramp.data import record_label, record_prompt

    prompts = [record_prompt(r) for r in records]
    gold = [record_label(r) for r in records]
    n = len(records)
    t0 = time.perf_counter()
    picked = classify_by_label_likelihood(model, tokenizer, prompts, labels)
    correct = sum(p == g for (p, _), g in zip(picked, gold, strict=True))
    lo, hi = wilson_interval(correct, n)
    result: dict[str, Any] = {
        "n_queries": n,
        "constrained": {
            "accuracy": correct / n,
            "correct": correct,
            "ci95_wilson": [lo, hi],
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }
    if free:
        t0 = time.perf_counter()
        longest = max(len(s) for s in label_token_ids(tokenizer, labels))
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens=longest + 2)
        label_set = set(labels)
        hits = sum(a == g for a, g in zip(answers, gold, strict=True))
        result["free"] = {
            "exact_match": hits / n,
            "correct": hits,
            "invalid_rate": sum(a not in label_set for a in answers) / n,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return result

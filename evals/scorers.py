"""Constrained accuracy: a scorer picks one label per prompt (never free text), under one interface.

offramp has four, each with its reason to exist; every result records which one produced it (`scorer`):
- `lm-eval-multiple-choice`: `offramp eval` on a local checkpoint (lm-eval's log-likelihood of each label, +
  end-of-turn token, after the chat-templated prompt; argmax). Costs one forward pass per label.
- `vllm-structured-choice`: `offramp eval` on a vLLM endpoint, decoding restricted by the request's
  `structured_outputs: {choice: labels}` (and OpenAI's strict JSON-schema enum: `openai-json-schema-enum`).
- `label-trie-argmax`: the same argmax as lm-eval's, exact, found by best-first search over the label token trie;
  the finetune learning-curve scripts use it (a confident model expands a handful of trie nodes, not 77 labels).
- `hf-prefix-constrained-greedy`: greedy decoding restricted to the label tokens by transformers'
  `prefix_allowed_tokens_fn`: the decision vLLM's structured choice makes, for checkpoints vLLM cannot load
  (bitsandbytes).
"""

from __future__ import annotations

import copy
import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from offramp.evals.metrics import INVALID
from offramp.stats import wilson_interval
from offramp.systems import EndpointSystem, LocalSystem

LMEVAL_MULTIPLE_CHOICE = "lm-eval-multiple-choice"
VLLM_STRUCTURED_CHOICE = "vllm-structured-choice"
OPENAI_JSON_SCHEMA_ENUM = "openai-json-schema-enum"
LABEL_TRIE_ARGMAX = "label-trie-argmax"
HF_PREFIX_CONSTRAINED_GREEDY = "hf-prefix-constrained-greedy"
FREE_GREEDY = "free-greedy-exact-match"  # not constrained: greedy text, then parsed / matched against the labels

Prompt = list[dict]  # chat messages, no final answer


class ConstrainedScorer(Protocol):
    """Picks, for each prompt, the index of one of `labels` (INVALID where it produced none)."""

    name: str

    def predict(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[int]: ...


def constrained_accuracy(
    scorer: ConstrainedScorer, prompts: Sequence[Prompt], labels: Sequence[str], gold: Sequence[str]
) -> dict[str, Any]:
    """`scorer`'s accuracy on the prompts, with its Wilson interval, the time it took and the scorer's name."""
    t0 = time.perf_counter()
    preds = scorer.predict(prompts, labels)
    correct = sum(p != INVALID and labels[p] == g for p, g in zip(preds, gold, strict=True))
    n = len(gold)
    lo, hi = wilson_interval(correct, n)
    return {
        "scorer": scorer.name,
        "accuracy": correct / n,
        "correct": correct,
        "ci95_wilson": [lo, hi],
        "seconds": round(time.perf_counter() - t0, 1),
    }


# ---- the label token trie, shared by the two in-process scorers -----------------------------------------------
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


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[list[int]]:
    """Each label's answer tokens as the model must produce them: the label then the end-of-turn token."""
    end = tokenizer.eos_token or ""
    return [tokenizer(label + end, add_special_tokens=False)["input_ids"] for label in labels]


def prompt_ids(tokenizer: Any, messages: Prompt) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---- label-trie-argmax -----------------------------------------------------------------------------------------
@dataclass
class LabelTrieArgmax:
    """The label with the highest total log-likelihood given the prompt, exact, by best-first trie search.

    Token log-probs are <= 0, so a prefix's score bounds every completion of it, and the first complete label taken
    off the heap beats all others. The prompt runs once; each round expands up to `expand_batch` of the best prefixes
    in one batched forward on its KV cache.
    """

    model: Any
    tokenizer: Any
    expand_batch: int = 16
    name: str = field(default=LABEL_TRIE_ARGMAX, init=False)

    def predict(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[int]:
        index = {label: i for i, label in enumerate(labels)}
        return [index[label] for label, _ in self.best_labels(prompts, labels)]

    def best_labels(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[tuple[str, float]]:
        """For each prompt, the best label and its log-likelihood."""
        import torch

        trie = LabelTrie.build(label_token_ids(self.tokenizer, labels))
        device = next(self.model.parameters()).device
        results = []
        with torch.inference_mode():
            for messages in prompts:
                ids = torch.tensor([prompt_ids(self.tokenizer, messages)], device=device)
                out = self.model(input_ids=ids, use_cache=True)
                first = torch.log_softmax(out.logits[0, -1].float(), -1)
                heap = [(-first[tok].item(), (tok,)) for tok in trie.children[()]]
                heapq.heapify(heap)
                neg, best = self._search(trie, heap, out.past_key_values, ids.shape[1])
                results.append((labels[trie.leaves[best]], -neg))
        return results

    def _search(self, trie: LabelTrie, heap: list, prompt_cache: Any, plen: int) -> tuple[float, tuple[int, ...]]:
        while heap[0][1] not in trie.leaves:
            batch = []
            while heap and len(batch) < self.expand_batch and heap[0][1] not in trie.leaves:
                batch.append(heapq.heappop(heap))
            for (neg, prefix), logp in zip(batch, self._next_logprobs(prompt_cache, plen, batch), strict=True):
                for tok in trie.children[prefix]:
                    heapq.heappush(heap, (neg - logp[tok].item(), (*prefix, tok)))
        return heap[0]

    def _next_logprobs(self, prompt_cache: Any, plen: int, batch: list[tuple[float, tuple[int, ...]]]) -> Any:
        """Next-token log-probs after prompt + each prefix: the prefixes right-padded, on a copy of the prompt cache."""
        import torch

        device = next(self.model.parameters()).device
        longest = max(len(p) for _, p in batch)
        ids = torch.zeros((len(batch), longest), dtype=torch.long, device=device)
        mask = torch.zeros((len(batch), plen + longest), dtype=torch.long, device=device)
        mask[:, :plen] = 1
        for row, (_, prefix) in enumerate(batch):
            ids[row, : len(prefix)] = torch.tensor(prefix)
            mask[row, plen : plen + len(prefix)] = 1
        cache = copy.deepcopy(prompt_cache)
        cache.batch_repeat_interleave(len(batch))
        logits = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits
        last = torch.tensor([len(p) - 1 for _, p in batch], device=device)
        return torch.log_softmax(logits[torch.arange(len(batch), device=device), last].float(), -1)


# ---- hf-prefix-constrained-greedy ------------------------------------------------------------------------------
@dataclass
class PrefixConstrainedGreedy:
    """Greedy decoding restricted to the label strings (+ end of turn) by `prefix_allowed_tokens_fn`; `tokenizer`
    must pad on the left. Per-label log-likelihood would cost one forward pass per label and query; this costs one
    generate per batch."""

    model: Any
    tokenizer: Any
    batch_size: int = 16
    name: str = field(default=HF_PREFIX_CONSTRAINED_GREEDY, init=False)

    def predict(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[int]:
        seqs = label_token_ids(self.tokenizer, labels)
        trie = LabelTrie.build(seqs)
        preds: list[int] = []
        for start in range(0, len(prompts), self.batch_size):
            preds += self._batch(prompts[start : start + self.batch_size], trie, max(map(len, seqs)))
        return preds

    def _batch(self, chunk: Sequence[Prompt], trie: LabelTrie, max_new_tokens: int) -> list[int]:
        import torch

        tok = self.tokenizer
        end = tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else end
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chunk]
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        n = batch.input_ids.shape[1]

        def allowed(_row: int, ids: torch.Tensor) -> list[int]:
            return sorted(trie.children.get(tuple(ids[n:].tolist()), {pad}))

        with torch.no_grad():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=end,
                pad_token_id=pad,
                prefix_allowed_tokens_fn=allowed,
            )
        preds = []
        for row in out[:, n:].tolist():
            got = tuple(row[: row.index(end) + 1]) if end in row else tuple(row)
            preds.append(trie.leaves.get(got, INVALID))
        return preds


# ---- the two scorers `offramp eval` runs: lm-eval on a local checkpoint, structured choice on an endpoint -------
def _task(prompts: Sequence[Prompt], labels: Sequence[str]) -> Any:
    from offramp.evals.tasks import EvalTask, Query

    # the gold label is not the scorer's business: any label will do for lm-eval's doc
    queries = [Query(id=i, messages=list(m), label=labels[0]) for i, m in enumerate(prompts)]
    return EvalTask(name="scorer", queries=queries, labels=list(labels), source="in memory")


@dataclass
class LmEvalMultipleChoice:
    """lm-eval's multiple_choice on a local checkpoint (offramp.evals.run.run_local, constrained answers only)."""

    system: LocalSystem
    batch_size: int = 8
    name: str = field(default=LMEVAL_MULTIPLE_CHOICE, init=False)

    def predict(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[int]:
        from dataclasses import replace

        from offramp.evals.run import run_local

        system = replace(self.system, answers="constrained")
        return run_local(system, _task(prompts, labels), batch_size=self.batch_size).preds["constrained"]


@dataclass
class EndpointStructuredChoice:
    """The endpoint's own constrained decoding (vLLM structured choice; OpenAI JSON-schema enum)."""

    system: EndpointSystem
    concurrency: int = 8
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = endpoint_scorer(self.system.provider) or f"{self.system.provider}: none"

    def predict(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> list[int]:
        from dataclasses import replace

        from offramp.evals.run import run_endpoint

        system = replace(self.system, answers="constrained")
        answers = run_endpoint(system, _task(prompts, labels), cache=None, concurrency=self.concurrency)
        return answers.preds["constrained"]


def endpoint_scorer(provider: str) -> str | None:
    """The constrained scorer an endpoint of `provider` gets; None where its API has no such control."""
    return {"vllm": VLLM_STRUCTURED_CHOICE, "openai": OPENAI_JSON_SCHEMA_ENUM}.get(provider)


# ---- free answers, for the finetune curve's last point -----------------------------------------------------------
def generate_answers(
    model: Any, tokenizer: Any, prompts: Sequence[Prompt], max_new_tokens: int, batch_size: int = 32
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


def classification_accuracy(
    model: Any, tokenizer: Any, records: list[dict], labels: list[str], *, free: bool = True
) -> dict[str, Any]:
    """Constrained (label-trie-argmax) and, optionally, free-generation accuracy on chat records."""
    from offramp.data import record_label, record_prompt

    prompts = [record_prompt(r) for r in records]
    gold = [record_label(r) for r in records]
    n = len(records)
    result: dict[str, Any] = {
        "n_queries": n,
        "constrained": constrained_accuracy(LabelTrieArgmax(model, tokenizer), prompts, labels, gold),
    }
    if free:
        t0 = time.perf_counter()
        longest = max(len(s) for s in label_token_ids(tokenizer, labels))
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens=longest + 2)
        label_set = set(labels)
        hits = sum(a == g for a, g in zip(answers, gold, strict=True))
        result["free"] = {
            "scorer": FREE_GREEDY,
            "exact_match": hits / n,
            "correct": hits,
            "invalid_rate": sum(a not in label_set for a in answers) / n,
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return result

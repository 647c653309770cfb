"""Chat records -> token ids with the loss on assistant tokens only, and the padding collator for them.

The chat template comes from the tokenizer. An assistant turn's tokens are found by rendering the conversation
up to that turn with and without the answer: the extra text is the answer (plus the template's end-of-turn
token, which the model must learn to emit); everything else gets the label -100.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from offramp.errors import OfframpError

IGNORE = -100


@dataclass
class TokenizedData:
    examples: list[dict[str, list[int]]]
    records: int
    dropped_too_long: int
    tokens: int = 0
    target_tokens: int = 0
    lengths: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "examples": len(self.examples),
            "dropped_too_long": self.dropped_too_long,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "max_tokens": max(self.lengths, default=0),
        }


def _render(tokenizer: Any, messages: list[dict], *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_char_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant answer (end-of-turn included)."""
    text = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not upto.startswith(before) or not text.startswith(upto):
            raise OfframpError(
                "the tokenizer's chat template does not render conversations prefix by prefix; "
                "cannot tell the assistant tokens apart"
            )
        # The template's trailing whitespace after the end-of-turn token is not part of the answer.
        spans.append((len(before), len(upto.rstrip())))
    return text, spans


def tokenize_chat(tokenizer: Any, messages: list[dict]) -> dict[str, list[int]]:
    """input_ids and labels for one conversation; labels are -100 except on assistant answers."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        inside = end > start and any(s <= start and end <= e for s, e in spans)
        labels.append(tok_id if inside else IGNORE)
    return {"input_ids": list(enc["input_ids"]), "labels": labels}


def build_examples(tokenizer: Any, records: list[dict], max_len: int, source: str) -> TokenizedData:
    """Tokenize every record; drop (and count) those longer than max_len; fail if nothing is left to train on."""
    data = TokenizedData(examples=[], records=len(records), dropped_too_long=0)
    for n, rec in enumerate(records, 1):
        ex = tokenize_chat(tokenizer, rec["messages"])
        targets = sum(1 for x in ex["labels"] if x != IGNORE)
        if targets == 0:
            raise OfframpError(f"{source}: record {n} has no assistant tokens to train on")
        if len(ex["input_ids"]) > max_len:
            data.dropped_too_long += 1
            continue
        data.examples.append(ex)
        data.lengths.append(len(ex["input_ids"]))
        data.tokens += len(ex["input_ids"])
        data.target_tokens += targets
    if not data.examples:
        longest = "?"
        if records:
            longest = max(len(tokenize_chat(tokenizer, r["messages"])["input_ids"]) for r in records[:1000])
        raise OfframpError(
            f"{source}: all {len(records)} records are longer than --max-len {max_len} tokens "
            f"(longest of the first 1000: {longest}); raise --max-len"
        )
    return data


class PadCollator:
    """Right-pads a batch to its longest sequence: pad ids are masked out of attention and of the loss.

    With answer_logits_only, the batch also names the positions whose next token is an answer token
    (`logits_to_keep`) and those targets (`shift_labels`, transformers' causal-LM loss takes them as they are): the
    model runs its LM head there alone. The loss is the same; a vocabulary-wide matmul and softmax at every prompt
    token, about a fifth of a 135M model's FLOPs on short answers, is not computed."""

    def __init__(self, pad_token_id: int, multiple_of: int = 1, answer_logits_only: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.multiple_of = multiple_of
        self.answer_logits_only = answer_logits_only

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        longest = max(len(ex["input_ids"]) for ex in batch)
        longest = -(-longest // self.multiple_of) * self.multiple_of
        ids, labels, mask = [], [], []
        for ex in batch:
            pad = longest - len(ex["input_ids"])
            ids.append(ex["input_ids"] + [self.pad_token_id] * pad)
            labels.append(ex["labels"] + [IGNORE] * pad)
            mask.append([1] * len(ex["input_ids"]) + [0] * pad)
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }
        if self.answer_logits_only:
            shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # position t predicts t+1
            keep = shifted.ne(IGNORE).any(0).nonzero().squeeze(1)
            batch["logits_to_keep"] = keep
            batch["shift_labels"] = shifted[:, keep].contiguous()
        return batch

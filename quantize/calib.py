"""Calibration and held-out text: the user's own task conversations, chat-templated with the model's template."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from offramp.data import (
    BUILTIN,
    builtin_splits,
    load_chat_jsonl,
    per_label_subset,
    record_prompt,
    system_prompt,
    to_chat,
)
from offramp.errors import OfframpError


@dataclass(frozen=True)
class TaskText:
    source: str  # where the calibration records came from
    calib: list[dict]  # chat records used to calibrate (GPTQ / SmoothQuant statistics)
    heldout: list[dict]  # disjoint chat records scored for perplexity (prompt + answer)
    heldout_source: str


def load_task_text(calib: str, *, n_calib: int, n_heldout: int, seed: int = 0) -> TaskText:
    """`calib` is a chat JSONL file or a built-in task name; held-out text is its test split.

    For a file, the held-out text is `test.jsonl` beside it (as `offramp data prepare` writes it) when that exists,
    else the tail of the file itself, kept disjoint from the calibration sample.
    """
    if n_calib < 1 or n_heldout < 1:
        raise OfframpError("--n-calib and --n-heldout must be at least 1")
    if calib in BUILTIN:
        train, test, labels = builtin_splits(calib)
        system = system_prompt(labels)
        # a label-balanced sample: every intent shows up in the calibration statistics
        per_label = max(1, -(-n_calib // len(labels)))
        calib_recs = [to_chat(e, system) for e in per_label_subset(train, per_label, seed)][:n_calib]
        heldout = [to_chat(e, system) for e in per_label_subset(test, max(1, -(-n_heldout // len(labels))), seed)]
        return TaskText(
            f"built-in {calib} train split", calib_recs, heldout[:n_heldout], f"built-in {calib} test split"
        )
    path = Path(calib)
    if not path.exists():
        raise OfframpError(f"calibration data {calib!r}: no such file, and not a built-in task ({', '.join(BUILTIN)})")
    if path.is_dir():
        path = path / "train.jsonl"
    records = load_chat_jsonl(path, need_assistant=False)
    test = path.with_name("test.jsonl")
    if test.is_file() and test.resolve() != path.resolve():
        heldout = load_chat_jsonl(test, need_assistant=False)[:n_heldout]
        return TaskText(str(path), records[:n_calib], heldout, str(test))
    if len(records) < 2:
        raise OfframpError(
            f"{path}: {len(records)} record; need at least 2 (calibration + held-out) or a test.jsonl beside it"
        )
    k = min(n_heldout, max(1, len(records) // 5))
    return TaskText(str(path), records[:-k][:n_calib], records[-k:], f"{path} (last {k} records, not calibrated on)")


def render(tokenizer, record: dict) -> str:
    """A whole conversation as the model sees it in training and serving: chat template applied."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(record["messages"], tokenize=False)
    return "\n".join(m["content"] for m in record["messages"])


def render_prompt(tokenizer, record: dict) -> str:
    """The prompt part only, ready for the model to answer (generation prompt appended)."""
    msgs = record_prompt(record) if record["messages"][-1]["role"] == "assistant" else record["messages"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in msgs) + "\n"

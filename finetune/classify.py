"""The classifier head (`offramp finetune --head classify`): chat JSONL -> peft SEQ_CLS LoRA adapter, a merged
`…ForSequenceClassification` checkpoint vLLM serves with `--runner pooling`, and the LM path's finetune report.

The input is the prompt exactly as it is served: the messages without the final assistant turn, rendered by the
chat template with add_generation_prompt=True; the target is that turn (the label), one class of labels.json.
Cross-entropy over the label set is what transformers' seq-cls head computes for integer labels.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from offramp.data import check_record_labels, label_list, load_chat_jsonl, record_label
from offramp.errors import NotSupportedHere, OfframpError
from offramp.finetune.dataset import TokenizedData
from offramp.finetune.train import (
    RunInputs,
    linear_module_names,
    load_chat_tokenizer,
    train_and_report,
    write_bf16_checkpoint,
)
from offramp.hardware import model_dtype
from offramp.paths import atomic_dir
from offramp.reports import write_report


def task_labels(data: Path) -> list[str]:
    """labels.json beside the training data: the classes, in id order."""
    path = Path(data).with_name("labels.json")
    if not path.is_file():
        raise OfframpError(
            f"--head classify needs the label set: no labels.json beside {data} "
            "(`offramp data prepare` writes one; or write a JSON list of the labels there)"
        )
    return label_list(str(path), "labels.json")


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """What the served model sees: the conversation without its final assistant turn, with the generation prompt."""
    return tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)


def build_label_examples(
    tokenizer: Any, records: list[dict], labels: list[str], max_len: int, source: str
) -> TokenizedData:
    check_record_labels(records, labels, source, "labels.json")
    label2id = {label: i for i, label in enumerate(labels)}
    data = TokenizedData(examples=[], records=len(records), dropped_too_long=0)
    for rec in records:
        label = record_label(rec)
        ids = tokenizer(prompt_text(tokenizer, rec["messages"]), add_special_tokens=False)["input_ids"]
        if len(ids) > max_len:
            data.dropped_too_long += 1
            continue
        data.examples.append({"input_ids": list(ids), "labels": label2id[label]})
        data.lengths.append(len(ids))
        data.tokens += len(ids)
        data.target_tokens += 1
    if not data.examples:
        raise OfframpError(f"{source}: all {len(records)} prompts are longer than --max-len {max_len}; raise it")
    return data


class LabelCollator:
    """Right-pads the prompts; the label is one class id per sequence."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(ex["input_ids"]) for ex in batch)
        ids = [ex["input_ids"] + [self.pad_token_id] * (longest - len(ex["input_ids"])) for ex in batch]
        mask = [[1] * len(ex["input_ids"]) + [0] * (longest - len(ex["input_ids"])) for ex in batch]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor([ex["labels"] for ex in batch], dtype=torch.long),
        }


def label_maps(labels: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _load_classifier(inputs: RunInputs, accelerator: str, labels: list[str], pad_token_id: int) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    r = inputs.recipe
    dtype = getattr(torch, model_dtype("train", accelerator))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            inputs.model_path, dtype=dtype, pad_token_id=pad_token_id, **label_maps(labels)
        )
    except OSError as e:
        raise OfframpError(f"could not load {inputs.model_ref}: {e}") from None
    # Llama-style seq-cls pools the last non-pad token: without pad_token_id it refuses batches above one.
    model.config.pad_token_id = pad_token_id
    names = linear_module_names(model) if r.target_modules == "all-linear" else r.target_modules
    # peft's SEQ_CLS task puts the new `score` head in modules_to_save (trained in full), not under LoRA.
    config = LoraConfig(
        r=r.rank,
        lora_alpha=r.alpha,
        lora_dropout=r.dropout,
        target_modules=[n for n in names if n != "score"],
        task_type="SEQ_CLS",
    )
    return get_peft_model(model, config)


def _prepare(inputs: RunInputs) -> tuple[Any, list[str], TokenizedData, TokenizedData | None]:
    r = inputs.recipe
    if r.method != "lora":
        raise NotSupportedHere("--head classify trains with --method lora only")
    if inputs.out.exists():
        raise OfframpError(f"{inputs.out} already exists; remove it or choose another --out")
    labels = task_labels(inputs.data)
    tokenizer = load_chat_tokenizer(inputs)
    train = build_label_examples(tokenizer, load_chat_jsonl(inputs.data), labels, r.max_len, str(inputs.data))
    evals = None
    if inputs.eval_data:
        evals = build_label_examples(
            tokenizer, load_chat_jsonl(inputs.eval_data), labels, r.max_len, str(inputs.eval_data)
        )
    return tokenizer, labels, train, evals


def run_classify(inputs: RunInputs, accelerator: str, extra_callbacks: list | None = None) -> dict[str, Any]:
    """The LM path's run (same Trainer set-up, resume, progress, report) with a sequence-classification head."""
    inputs = replace(inputs, merge=True)  # the merged checkpoint is what vLLM's pooling runner serves
    tokenizer, labels, train, evals = _prepare(inputs)
    load = partial(_load_classifier, inputs, accelerator, labels, tokenizer.pad_token_id)
    done = train_and_report(inputs, accelerator, load, LabelCollator(tokenizer.pad_token_id), train, evals,
                            extra_callbacks)  # fmt: skip
    if done is None:
        return {}
    trainer, body, wd = done
    body |= {"head": "classify", "labels": labels}
    with atomic_dir(inputs.out) as tmp:
        trainer.model.save_pretrained(tmp / "adapter")
        write_bf16_checkpoint(trainer.model.merge_and_unload(), tokenizer, tmp / "merged")
        write_report(tmp / "finetune_report.json", "finetune", body)
    shutil.rmtree(wd, ignore_errors=True)
    return body

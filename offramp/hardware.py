"""What machine a measurement was taken on; every measured number in a report carries this."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from functools import cache
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
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

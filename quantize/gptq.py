"""GPTQ W4A16 through GPTQModel (runs in the gptq env); writes a GPTQ-format checkpoint vLLM serves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from offramp.hardware import accelerator, cpu_cores


def _cpu_workers() -> None:
    # GPTQModel sizes its CPU thread pool from os.cpu_count(), which oversubscribes small shared hosts;
    # must be set before gptqmodel is imported.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(cpu_cores()))


def check_supported(method: str) -> None:
    """Nothing to probe: GPTQModel runs wherever its env was created (offramp.envs refuses the others)."""


def quantize(method: str, src: str, out: Path, calib_texts: list[str], group_size: int, *, sym: bool = True) -> dict:
    _cpu_workers()
    from gptqmodel import GPTQConfig, GPTQModel

    settings = {"bits": 4, "group_size": group_size, "sym": sym, "desc_act": False, "format": "gptq"}
    # offload_to_disk pages finished layers out to save RAM on huge models; a slow no-op for small ones here.
    config = GPTQConfig(**settings, offload_to_disk=False)
    model = GPTQModel.load(src, config, device=accelerator())
    model.quantize(calib_texts, batch_size=1, calibration_data_min_length=4)
    model.save(str(out))
    # GPTQModel rewrites generation_config.json (it adds do_sample=true); keep the model's own defaults.
    original = Path(src) / "generation_config.json"
    if original.is_file():
        shutil.copyfile(original, out / "generation_config.json")
    return {"settings": {**settings, "calibration_samples": len(calib_texts)}}


def load(method: str, path: Path):
    _cpu_workers()
    from gptqmodel import GPTQModel

    wrapped = GPTQModel.load(str(path), device=accelerator())
    return wrapped.model

"""bitsandbytes NF4 / LLM.int8() through transformers' BitsAndBytesConfig (runs in the runtime env)."""

from __future__ import annotations

from pathlib import Path

from offramp.errors import NotSupportedHere
from offramp.hardware import accelerator, model_dtype


def check_supported(method: str) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # a broken native library raises more than ImportError
        raise NotSupportedHere(f"{method} needs a working bitsandbytes ({type(e).__name__}: {e})") from None


def _config(method: str):
    from transformers import BitsAndBytesConfig

    if method == "bnb-nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=model_dtype("quantize")
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def quantize(method: str, src: str, out: Path, calib_texts: list[str], group_size: int, *, sym: bool = True) -> dict:
    """bnb quantizes while loading: no calibration data, no group size to choose."""
    from transformers import AutoModelForCausalLM

    check_supported(method)
    model = AutoModelForCausalLM.from_pretrained(
        src,
        quantization_config=_config(method),
        dtype=model_dtype("quantize"),
        device_map=accelerator(),
    )
    model.save_pretrained(out)
    return {"in_memory_model": model, "settings": {"quantization_config": model.config.quantization_config.to_dict()}}


def load(method: str, path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, device_map=accelerator())

"""What a quantized checkpoint costs and loses: bytes on disk and in tensors, perplexity, a greedy answer."""

from __future__ import annotations

import contextlib
import json
import math
from importlib import metadata
from pathlib import Path

from offramp.errors import OfframpError

DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def tensor_specs(path: Path) -> dict[str, tuple[str, list[int]]]:
    """{tensor name: (safetensors dtype, shape)} of one .safetensors file, from its header (no weights loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        names = f.keys()  # a list: safe_open is not iterable
        return {name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()) for name in names}


def tensor_bytes(checkpoint: Path) -> dict[str, int]:
    """Bytes of every tensor in a checkpoint's safetensors files, read from their headers (no weights loaded)."""
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        raise OfframpError(f"{checkpoint}: no .safetensors files")
    out: dict[str, int] = {}
    for f in files:
        for name, (dtype, shape) in tensor_specs(f).items():
            if dtype not in DTYPE_BYTES:
                raise OfframpError(f"{f}: tensor {name} has dtype {dtype}, whose size offramp does not know")
            out[name] = math.prod(shape) * DTYPE_BYTES[dtype]
    return out


def linear_prefixes(base_checkpoint: Path) -> set[str]:
    """Module names of the transformer blocks' linear layers (the ones a quantizer packs): 2-D weights in layers."""
    with open(Path(base_checkpoint) / "config.json") as f:
        config = json.load(f)
    hidden = config.get("hidden_size")
    prefixes = set()
    for f in sorted(Path(base_checkpoint).glob("*.safetensors")):
        for name, (_, shape) in tensor_specs(f).items():
            if name.endswith(".weight") and ".layers." in name and len(shape) == 2:
                prefixes.add(name[: -len(".weight")])
    if not prefixes:
        raise OfframpError(f"{base_checkpoint}: found no linear layers (hidden size {hidden})")
    return prefixes


def size_summary(checkpoint: Path, prefixes: set[str]) -> dict[str, int]:
    """Whole checkpoint on disk, all tensors, and the tensors of the quantized linear layers only."""
    tensors = tensor_bytes(checkpoint)
    linear = sum(b for name, b in tensors.items() if _under(name, prefixes))
    return {"disk_bytes": dir_bytes(checkpoint), "tensor_bytes": sum(tensors.values()), "linear_bytes": linear}


def _under(name: str, prefixes: set[str]) -> bool:
    # bnb 4-bit stores `…q_proj.weight.quant_state.bitsandbytes__nf4` etc.: walk up the dotted name
    parts = name.split(".")
    return any(".".join(parts[:i]) in prefixes for i in range(len(parts) - 1, 0, -1))


def group_size_for(checkpoint: Path, preferred: tuple[int, ...] = (128, 64, 32)) -> int:
    """The largest preferred GPTQ group size dividing every linear layer's input width (576 = SmolLM2: 64)."""
    with open(Path(checkpoint) / "config.json") as f:
        c = json.load(f)
    c = c.get("text_config", c)
    widths = {c["hidden_size"], c["intermediate_size"]}
    if c.get("head_dim") and c.get("num_attention_heads"):
        widths.add(c["head_dim"] * c["num_attention_heads"])  # o_proj's input
    for g in preferred:
        if all(w % g == 0 for w in widths):
            return g
    raise OfframpError(f"no group size in {preferred} divides the layer widths {sorted(widths)}")


def versions(*dists: str) -> dict[str, str]:
    out = {}
    for d in ("torch", "transformers", *dists):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[d] = metadata.version(d)
    return out


def perplexity(model, tokenizer, texts: list[str], *, max_len: int = 512) -> float:
    """Token-level perplexity over all texts (each scored on its own, no padding), in float32 log-softmax."""
    import torch

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :max_len].to(device)
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll -= logp.gather(-1, ids[:, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    if count == 0:
        raise OfframpError("held-out text has no scorable tokens")
    return math.exp(nll / count)


def greedy_answer(model, tokenizer, prompt: str, *, max_new_tokens: int = 16) -> str:
    import torch

    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(device)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True).strip()


def label_probs(model, tokenizer, prompts: list[str]) -> list[list[float]]:
    """A classifier's probability for every label, per prompt (each scored on its own, no padding), float32
    softmax over the score head's logits: what vLLM's /classify returns."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            out.append(torch.softmax(model(input_ids=ids).logits[0].float(), -1).tolist())
    return out

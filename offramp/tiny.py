"""A tiny random Llama with a real tokenizer: fast tests of every stage without a real model's cost."""

from __future__ import annotations

from pathlib import Path

from offramp.paths import atomic_dir, write_json
from offramp.reports import now_iso
from offramp.store import MANIFEST, TINY, model_dir


def build_tiny_llama(tokenizer_src: str | Path, out: Path | None = None, *, seed: int = 0, force: bool = False) -> Path:
    """2 layers, hidden 64, SmolLM2's tokenizer and chat template; random weights, deterministic by seed."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out) if out else model_dir(TINY)
    tok = AutoTokenizer.from_pretrained(tokenizer_src)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    with atomic_dir(out, overwrite=True, force=force) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(
            tmp / MANIFEST,
            {
                "name": TINY,
                "description": "random weights, 2 layers, hidden 64; for tests only",
                "source": f"built by offramp from tokenizer {tokenizer_src}, seed {seed}",
                "license": "n/a (random weights)",
                "dtype": "bfloat16",
                "parameters": sum(p.numel() for p in model.parameters()),
                "created_at": now_iso(),
            },
        )
    return out

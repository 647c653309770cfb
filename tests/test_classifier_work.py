"""scripts/classifier_work.py's FLOP counts against torch's own FLOP counter on SmolLM2's real architecture."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "classifier_work", Path(__file__).parent.parent / "scripts" / "classifier_work.py"
)
work = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(work)


def _counted(model, n_tokens: int, **kwargs) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=torch.ones(1, n_tokens, dtype=torch.long, device="meta"), **kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("head", ["generate", "classify"])
def test_flops_per_request_match_torchs_counter(smollm2: Path, head: str) -> None:
    """One position: no causal mask to disagree on, so every counted matmul must agree to the FLOP. Eight
    positions: torch's eager attention multiplies the full 8 x 8 score matrix, ours the causal triangle, and
    the difference must be exactly the masked half."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(smollm2, attn_implementation="eager")
    cfg = json.loads((smollm2 / "config.json").read_text())
    with torch.device("meta"):
        if head == "generate":
            model = AutoModelForCausalLM.from_config(config)
        else:
            config.num_labels, config.pad_token_id = work.LABELS, cfg["pad_token_id"]
            model = AutoModelForSequenceClassification.from_config(config)

    def ours(n: int) -> float:
        return work.generation_flops(cfg, n, 1) if head == "generate" else work.classifier_flops(cfg, n)

    kwargs = {"logits_to_keep": 1} if head == "generate" else {}
    assert _counted(model, 1, **kwargs) == ours(1)
    per_score = 4 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"]  # one query-key pair
    masked_pairs = 8 * 8 - 8 * 9 // 2
    # transformers' classifier scores all 8 positions and keeps the last; vLLM's pooler scores the last one only
    extra_scores = 0 if head == "generate" else 7 * 2 * cfg["hidden_size"] * work.LABELS
    assert _counted(model, 8, **kwargs) - ours(8) == per_score * masked_pairs + extra_scores


def test_each_output_token_adds_a_position_and_an_lm_head(smollm2: Path) -> None:
    cfg = json.loads((smollm2 / "config.json").read_text())
    step = work.generation_flops(cfg, 40, 6) - work.generation_flops(cfg, 40, 5)
    lm_head = 2 * cfg["hidden_size"] * cfg["vocab_size"]
    attention_at_45 = 4 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"] * 45
    assert step == work.body_flops_per_position(cfg) + lm_head + attention_at_45

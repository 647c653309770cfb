"""CPU training step time with the LM head over every position vs at the answer positions only, one run, as JSON.

The LM path's loss reads the logits only where the next token is an answer token (a label and its end-of-turn on
Banking77), but a causal LM computes its LM head (576 x 49,152 on SmolLM2) and the softmax at every position unless
told otherwise. `PadCollator(answer_logits_only=True)`, what `offramp finetune` uses, passes `logits_to_keep`. Same
model, the default recipe's LoRA (r16, alpha 32, all linear layers, AdamW, lr 2e-3), the same batches of 16
chat-templated Banking77 training rows; both runs start from the same LoRA weights, and their steps are interleaved
so both see the same box load. Their losses must agree step by step.

    .venv/bin/python scripts/bench_train_logits.py     # re-runs itself in the runtime env (torch, peft)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("all_positions", "answer_positions")


def batches(tokenizer, n: int, size: int) -> list[list[dict]]:
    from offramp.data import builtin_splits, per_label_subset, system_prompt, to_chat
    from offramp.finetune.dataset import tokenize_chat

    train, _, labels = builtin_splits("banking77")
    rows = per_label_subset(train, 20, 0)[: n * size]
    system = system_prompt(labels)
    examples = [tokenize_chat(tokenizer, to_chat(e, system)["messages"]) for e in rows]
    return [examples[i : i + size] for i in range(0, len(examples), size)]


def measure(model_path: str, steps: int, warmup: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offramp.finetune.dataset import PadCollator
    from offramp.finetune.train import linear_module_names

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = batches(tokenizer, warmup + steps, 16)
    collate = {m: PadCollator(tokenizer.pad_token_id, answer_logits_only=m == "answer_positions") for m in MODES}
    runs = {}
    for mode in MODES:
        torch.manual_seed(0)  # the same LoRA A matrices in both runs
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=linear_module_names(model))
        model = get_peft_model(model, cfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
        runs[mode] = (model, opt)

    def step(mode: str, examples: list[dict]) -> tuple[float, float]:
        model, opt = runs[mode]
        t0 = time.perf_counter()
        batch = collate[mode](examples)
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0, loss.item()

    times: dict[str, list[float]] = {m: [] for m in MODES}
    losses: dict[str, list[float]] = {m: [] for m in MODES}
    for i, examples in enumerate(data):
        for mode in MODES:
            s, loss = step(mode, examples)
            losses[mode].append(round(loss, 5))
            if i >= warmup:
                times[mode].append(s)
    out: dict = {m: {"mean_step_s": sum(t) / len(t), "losses": losses[m]} for m, t in times.items()}
    out["speedup_answer_positions"] = out["all_positions"]["mean_step_s"] / out["answer_positions"]["mean_step_s"]
    out["max_loss_diff"] = max(abs(a - b) for a, b in zip(*losses.values(), strict=True))
    out["mean_tokens_per_row"] = sum(len(e["input_ids"]) for b in data for e in b) / sum(len(b) for b in data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "finetune" / "results" / "train_logits_cpu.json")
    a = ap.parse_args()
    from offramp.envs import script_needs

    script_needs("peft", "runtime")  # from the core env: this script again in the runtime env
    from offramp.hardware import hardware_info
    from offramp.paths import write_json
    from offramp.reports import now_iso
    from offramp.store import resolve_model

    body = {
        "benchmark": "cpu-train-lm-head-positions",
        "model": "smollm2-135m-instruct + LoRA r16 all-linear (the default recipe's)",
        "batch": "16 chat-templated Banking77 training rows (short system prompt), loss on the answer tokens",
        "created_at": now_iso(),
        "source": "measured here by scripts/bench_train_logits.py",
        "hardware": hardware_info(),
        "steps": a.steps,
        "warmup_steps": a.warmup,
        **measure(resolve_model("smollm2-135m-instruct"), a.steps, a.warmup),
    }
    if body["max_loss_diff"] > 1e-3:
        sys.exit(f"the two runs' losses differ by {body['max_loss_diff']:.5f}: not the same training")
    write_json(a.out, body)
    print(f"all positions {body['all_positions']['mean_step_s']:.3f} s/step, answer positions "
          f"{body['answer_positions']['mean_step_s']:.3f} s/step: {body['speedup_answer_positions']:.2f}x; "
          f"wrote {a.out}")  # fmt: skip


if __name__ == "__main__":
    main()

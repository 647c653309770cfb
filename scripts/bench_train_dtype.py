"""CPU training step time in fp32 vs bf16 autocast (LoRA on SmolLM2-135M), one run, written as JSON.

The question: on a CPU with native bf16 (AVX-512 BF16 / AMX), does bf16 autocast make the CPU recipes faster? The
finetune path trains in fp32 on CPU today (offramp.hardware.model_dtype). Same model, same LoRA (r16, all linear
layers), same batch (16 sequences of 64 tokens, SmolLM2's vocabulary), AdamW; warm-up steps first, then the timed
ones, the two modes interleaved step by step so both see the same box load.

    .venv/bin/python scripts/bench_train_dtype.py     # re-runs itself in the runtime env (torch, peft)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(model_path: str, steps: int, warmup: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    batch = torch.randint(0, 49152, (16, 64))
    runs = {}
    for mode in ("fp32", "bf16_autocast"):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        runs[mode] = (model, opt)

    def step(mode: str) -> tuple[float, float]:
        model, opt = runs[mode]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16_autocast"):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0, loss.item()

    times: dict[str, list[float]] = {m: [] for m in runs}
    losses: dict[str, list[float]] = {m: [] for m in runs}
    for i in range(warmup + steps):
        for mode in runs:
            s, loss = step(mode)
            losses[mode].append(round(loss, 4))
            if i >= warmup:
                times[mode].append(s)
    out = {m: {"mean_step_s": sum(t) / len(t), "losses": losses[m]} for m, t in times.items()}
    out["speedup_bf16"] = out["fp32"]["mean_step_s"] / out["bf16_autocast"]["mean_step_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "finetune" / "results" / "train_dtype_cpu.json")
    a = ap.parse_args()
    from offramp.envs import script_needs

    script_needs("peft", "runtime")  # from the core env: this script again in the runtime env
    from offramp.hardware import cpu_flags, hardware_info
    from offramp.paths import write_json
    from offramp.reports import now_iso
    from offramp.store import resolve_model

    flags = cpu_flags() or set()
    body = {
        "benchmark": "cpu-train-dtype",
        "model": "smollm2-135m-instruct + LoRA r16 all-linear",
        "batch": "16 sequences x 64 tokens (random ids), AdamW, loss on every token",
        "created_at": now_iso(),
        "source": "measured here by scripts/bench_train_dtype.py",
        "hardware": hardware_info(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx2", "avx512f"))),
        "steps": a.steps,
        "warmup_steps": a.warmup,
        **measure(resolve_model("smollm2-135m-instruct"), a.steps, a.warmup),
    }
    write_json(a.out, body)
    print(f"fp32 {body['fp32']['mean_step_s']:.2f} s/step, bf16 autocast {body['bf16_autocast']['mean_step_s']:.2f} "
          f"s/step: {body['speedup_bf16']:.2f}x; wrote {a.out}")  # fmt: skip


if __name__ == "__main__":
    main()

"""`offramp finetune`: LoRA / QLoRA on chat JSONL -> adapter dir (+ merged checkpoint) + finetune_report.json.

Several GPUs: run the same command under accelerate from the runtime env, e.g.
`~/.cache/offramp/envs/runtime/bin/accelerate launch --num_processes 4 -m offramp finetune MODEL --data …`
(DDP), or add `--use_fsdp --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP` (or an `accelerate config` file) for FSDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)


def finetune(
    model: Annotated[str, typer.Argument(help="store name, checkpoint dir or hub id")],
    data: Annotated[Path, typer.Option(help="training chat JSONL")],
    eval_data: Annotated[Path | None, typer.Option(help="held-out chat JSONL: eval loss in the report")] = None,
    recipe: Annotated[str, typer.Option(help="default, full, or a recipe YAML file")] = "default",
    method: Annotated[str | None, typer.Option(help="lora or qlora (4-bit base, needs bitsandbytes)")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank")] = None,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha")] = None,
    target_modules: Annotated[
        str | None, typer.Option(help="all-linear, or comma-separated module names (q_proj,v_proj)")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="passes over the data")] = None,
    max_steps: Annotated[int | None, typer.Option(help="optimizer steps (overrides --epochs)")] = None,
    lr: Annotated[float | None, typer.Option(help="peak learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option(help="sequences per device per micro-batch")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="micro-batches per optimizer step")] = None,
    max_len: Annotated[int | None, typer.Option(help="longest sequence in tokens; longer records are dropped")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    out: Annotated[Path | None, typer.Option(help="output dir (default: runs/finetune/<model>-<method>)")] = None,
    merge: Annotated[bool, typer.Option(help="also write a merged bf16 checkpoint")] = False,
    host_price_per_hour: Annotated[
        float | None, typer.Option(help="USD per hour of this host: the report's run cost")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="discard an interrupted run's checkpoints instead of resuming")] = False,
) -> None:
    """LoRA / QLoRA fine-tune on chat JSONL; loss on assistant tokens only; resumes after an interrupt."""
    from offramp.data import load_chat_jsonl
    from offramp.envs import accelerator, require_env
    from offramp.errors import OfframpError
    from offramp.store import resolve_model

    from .recipe import load_recipe

    if method is not None and method not in ("lora", "qlora"):
        raise OfframpError(f"--method must be lora or qlora, got {method!r}")
    if host_price_per_hour is not None and host_price_per_hour < 0:
        raise OfframpError("--host-price-per-hour must be >= 0")
    # bad data, model or recipe: one error line now, not after the runtime env's ~20 s of torch / peft imports
    for f in (data, eval_data):
        if f is not None:
            load_chat_jsonl(f)
    path = resolve_model(model)
    modules = None
    if target_modules is not None:
        modules = target_modules if target_modules == "all-linear" else [m.strip() for m in target_modules.split(",")]
    acc = accelerator()
    chosen = load_recipe(
        recipe,
        acc,
        {
            "method": method,
            "rank": rank,
            "alpha": alpha,
            "target_modules": modules,
            "epochs": epochs,
            "max_steps": max_steps,
            "lr": lr,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "max_len": max_len,
            "seed": seed,
        },
    )
    require_env("runtime")
    from .train import RunInputs, run_finetune

    name = Path(model).name if Path(model).exists() else model.replace("/", "--")
    out = out or Path("runs") / "finetune" / f"{name}-{chosen.method}"
    inputs = RunInputs(
        model_ref=model,
        model_path=path,
        data=data,
        eval_data=eval_data,
        recipe=chosen,
        out=out,
        merge=merge,
        host_price_per_hour=host_price_per_hour,
        fresh=fresh,
    )
    report = run_finetune(inputs, acc)
    if report:
        from rich.console import Console

        Console(stderr=True).print(
            f"[green]wrote[/] {out}: adapter, {'merged, ' if merge else ''}finetune_report.json — "
            f"{report['steps']} steps, loss {report['final_train_loss']:.4f}, "
            f"{report['wall_time_s']:.0f} s, {report['train_tokens_per_s']:.0f} tok/s"
        )
        print(out)

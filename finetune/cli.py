"""`offramp finetune`: LoRA / QLoRA on chat JSONL -> adapter dir (+ merged checkpoint) + finetune_report.json.

Several GPUs: run the same command under accelerate from the runtime env, e.g.
`~/.cache/offramp/envs/runtime/bin/accelerate launch --num_processes 4 -m offramp finetune MODEL --data …`
(DDP), or add `--use_fsdp --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP` (or an `accelerate config` file) for FSDP.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer

from offramp.finetune.recipe import Recipe, flag_help

# The common hyper-parameters get a flag each (every Recipe key is also a KEY=VALUE override), typed and described
# by its Recipe field: declared once, in finetune/recipe.py.
FLAGS = ("head", "method", "rank", "epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_len")


def register(app: typer.Typer) -> None:
    app.command("finetune")(with_recipe_flags(finetune, FLAGS))


def with_recipe_flags(command: Callable[..., None], keys: tuple[str, ...]) -> Callable[..., None]:
    """`command` with one `--KEY` option per Recipe field in `keys` (default None: the recipe's value stands), which
    it receives in its **kwargs; Typer reads the options from the signature set here."""
    sig = inspect.signature(command, eval_str=True)  # Typer needs the Annotated objects, not their strings
    fixed = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    options = [
        inspect.Parameter(
            key, inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[_flag_type(key) | None, typer.Option(help=flag_help(key))],
        )
        for key in keys
    ]  # fmt: skip
    command.__signature__ = sig.replace(parameters=[*fixed, *options])  # type: ignore[attr-defined]
    return command


def _flag_type(key: str) -> type:
    """A Recipe field's type as a Typer option takes it: `X | None` as X, a Literal's choices as str."""
    annotation = Recipe.model_fields[key].annotation
    if get_origin(annotation) is Literal:
        return str
    return next((a for a in get_args(annotation) if a is not type(None)), annotation)  # X | None -> X


def finetune(
    model: Annotated[str, typer.Argument(help="store name, checkpoint dir or hub id")],
    data: Annotated[Path, typer.Option(help="training chat JSONL")],
    eval_data: Annotated[Path | None, typer.Option(help="held-out chat JSONL: eval loss in the report")] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="default, full, classify, or a recipe YAML file [default: classify with "
            "--head classify, else default]",
            show_default=False,
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output dir (default: runs/finetune/<model>-<method>)")] = None,
    merge: Annotated[bool, typer.Option(help="also write a merged bf16 checkpoint")] = False,
    host_price_per_hour: Annotated[
        float | None, typer.Option(help="USD per hour of this host: the report's run cost")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="discard an interrupted run's checkpoints instead of resuming")] = False,
    settings: Annotated[
        list[str] | None,
        typer.Argument(
            help="hyper-parameter overrides as KEY=VALUE, any recipe key (lr=2e-3 dropout=0.05 warmup=0.1 "
            "scheduler=linear target_modules=q_proj,v_proj alpha=64 seed=1 max_steps=null); they beat the flags",
            show_default=False,
        ),
    ] = None,
    **flags: Any,  # the FLAGS options, added to the signature by with_recipe_flags
) -> None:
    """LoRA / QLoRA fine-tune on chat JSONL; loss on assistant tokens only; resumes after an interrupt."""
    from offramp.envs import require_env
    from offramp.finetune.recipe import load_recipe, parse_overrides
    from offramp.hardware import accelerator
    from offramp.store import resolve_model

    _check_inputs(flags["method"], [data, eval_data], host_price_per_hour)
    path = resolve_model(model)
    acc = accelerator()
    # without --recipe, a classifier trains on its own recipe's budget, not the LM head's
    recipe = recipe or ("classify" if flags["head"] == "classify" else "default")
    chosen = load_recipe(recipe, acc, flags, parse_overrides(settings or []))
    _check_head(chosen.head, model, path, [data, eval_data])
    require_env("runtime")
    from offramp.finetune.train import RunInputs, run_finetune

    name = Path(model).name if Path(model).exists() else model.replace("/", "--")
    suffix = "-classify" if chosen.head == "classify" else ""
    out = out or Path("runs") / "finetune" / f"{name}-{chosen.method}{suffix}"
    inputs = RunInputs(model_ref=model, model_path=path, data=data, eval_data=eval_data, recipe=chosen, out=out,
                       merge=merge, host_price_per_hour=host_price_per_hour, fresh=fresh)  # fmt: skip
    if chosen.head == "classify":
        from offramp.finetune.classify import run_classify

        report = run_classify(inputs, acc)
    else:
        report = run_finetune(inputs, acc)
    if report:
        _print_summary(out, report, merge or chosen.head == "classify")


def _check_head(head: str, model: str, path: str, data: list[Path | None]) -> None:
    """Before the runtime env starts: classify needs labels.json; a classifier checkpoint has no LM head, and the
    next-token path would silently train a random one."""
    from offramp.data import check_record_labels, load_chat_jsonl
    from offramp.errors import OfframpError
    from offramp.finetune.classify import task_labels
    from offramp.store import architectures, is_sequence_classifier

    if head == "classify":
        labels = task_labels(data[0])
        for f in filter(None, data):
            check_record_labels(load_chat_jsonl(f), labels, str(f), "labels.json")
    elif is_sequence_classifier(path):
        raise OfframpError(
            f"{model} is a sequence-classification checkpoint ({', '.join(architectures(path))}), not a causal LM; "
            "fine-tune it with --head classify, or give the base model"
        )


def _check_inputs(method: str | None, data_files: list[Path | None], price: float | None) -> None:
    """Bad data or flag: one error line now, not after the runtime env's ~20 s of torch / peft imports."""
    from offramp.data import load_chat_jsonl
    from offramp.errors import OfframpError

    choices = get_args(Recipe.model_fields["method"].annotation)
    if method is not None and method not in choices:
        raise OfframpError(f"--method must be {' or '.join(choices)}, got {method!r}")
    if price is not None and price < 0:
        raise OfframpError("--host-price-per-hour must be >= 0")
    for f in data_files:
        if f is not None:
            load_chat_jsonl(f)


def _print_summary(out: Path, report: dict, merge: bool) -> None:
    from rich.console import Console

    Console(stderr=True).print(
        f"[green]wrote[/] {out}: adapter, {'merged, ' if merge else ''}finetune_report.json — "
        f"{report['steps']} steps, loss {report['final_train_loss']:.4f}, "
        f"{report['wall_time_s']:.0f} s, {report['train_tokens_per_s']:.0f} tok/s"
    )
    print(out)

"""One fine-tuning run: chat JSONL -> peft LoRA / QLoRA adapter (+ merged checkpoint) + finetune_report.json.

transformers' Trainer drives the loop: it runs on CPU, one GPU, or several under `accelerate launch` (DDP or
FSDP), and checkpoints optimizer, scheduler, RNG and data position, so an interrupted run resumes exactly.
Checkpoints live in a work dir beside the output; the output dir itself appears only when the run succeeded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offramp.data import load_chat_jsonl
from offramp.errors import NotSupportedHere, OfframpError
from offramp.finetune.dataset import PadCollator, TokenizedData, build_examples
from offramp.finetune.recipe import Recipe
from offramp.hardware import model_dtype
from offramp.paths import atomic_dir, read_json, write_json
from offramp.reports import write_report

RUN_STATE = "offramp_run.json"


class Interrupted(OfframpError):
    exit_code = 130


@dataclass
class RunInputs:
    model_ref: str
    model_path: str
    data: Path
    eval_data: Path | None
    recipe: Recipe
    out: Path
    merge: bool = False
    host_price_per_hour: float | None = None
    fresh: bool = False


def work_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.work"


def _fingerprint(inputs: RunInputs) -> str:
    h = hashlib.sha256()
    h.update(inputs.model_path.encode())
    for p in (inputs.data, inputs.eval_data):
        if p is not None:
            h.update(hashlib.sha256(Path(p).read_bytes()).digest())
    h.update(json.dumps(inputs.recipe.hyperparameters(), sort_keys=True).encode())
    return h.hexdigest()


def check_4bit_training(device: str) -> None:
    """QLoRA needs bitsandbytes 4-bit layers that run forward and backward here; one clear error otherwise."""
    try:
        import bitsandbytes as bnb
        import torch

        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to(device)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        layer(x).sum().backward()
        if x.grad is None or not torch.isfinite(x.grad).all():
            raise RuntimeError("no finite gradient through the 4-bit layer")
    except Exception as e:
        raise NotSupportedHere(
            f"QLoRA needs bitsandbytes 4-bit layers, which do not run on this host's {device} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unavailable'}); use --method lora"
        ) from None


def _load_model(inputs: RunInputs, accelerator: str) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    r = inputs.recipe
    dtype = getattr(torch, model_dtype("train", accelerator))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if r.method == "qlora":
        from accelerate import PartialState

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": PartialState().process_index if accelerator == "cuda" else "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(inputs.model_path, **kwargs)
    except OSError as e:
        raise OfframpError(f"could not load {inputs.model_ref}: {e}") from None
    if r.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=accelerator == "cuda")
    config = LoraConfig(
        r=r.rank,
        lora_alpha=r.alpha,
        lora_dropout=r.dropout,
        target_modules=linear_module_names(model) if r.target_modules == "all-linear" else r.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def takes_logits_to_keep(model_path: str) -> bool:
    """Whether the checkpoint's causal-LM class computes its LM head only at given positions (transformers' own
    models do; a remote-code one may not)."""
    import inspect

    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(AutoConfig.from_pretrained(model_path)), None)
    return model_class is not None and "logits_to_keep" in inspect.signature(model_class.forward).parameters


def linear_module_names(model: Any) -> list[str]:
    """Short names of every linear layer but the output head (q_proj, …, down_proj).

    peft's own "all-linear" shortcut writes full module paths into adapter_config.json; short names are what
    vLLM's --lora-modules and most tools expect.
    """
    import torch

    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        # bitsandbytes' 4-bit layers subclass torch.nn.Linear too.
        if isinstance(module, torch.nn.Linear) and module is not head:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _training_args(inputs: RunInputs, accelerator: str, steps_per_epoch: int, wd: Path) -> Any:
    from transformers import TrainingArguments

    r = inputs.recipe
    total = r.max_steps or max(1, round(steps_per_epoch * r.epochs))
    return TrainingArguments(
        output_dir=str(wd),
        per_device_train_batch_size=r.batch_size,
        per_device_eval_batch_size=r.batch_size,
        gradient_accumulation_steps=r.grad_accum,
        learning_rate=r.lr,
        num_train_epochs=r.epochs,
        max_steps=r.max_steps or -1,
        lr_scheduler_type=r.scheduler,
        warmup_steps=r.warmup,
        weight_decay=r.weight_decay,
        seed=r.seed,
        logging_steps=r.logging_steps or max(1, total // 100),
        save_strategy="steps",
        save_steps=r.save_steps or max(10, total // 10),
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",  # fewer pad tokens per batch
        include_num_input_tokens_seen="non_padding",
        bf16=model_dtype("train", accelerator) == "bfloat16",
        use_cpu=accelerator == "cpu",
        dataloader_num_workers=0,
        prediction_loss_only=True,
    )


def _last_checkpoint(wd: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(wd)) if wd.is_dir() else None


def _prepare_work_dir(inputs: RunInputs) -> tuple[Path, dict]:
    wd = work_dir(inputs.out)
    fingerprint = _fingerprint(inputs)
    state_file = wd / RUN_STATE
    if inputs.fresh and wd.exists():
        shutil.rmtree(wd)
    if state_file.is_file():
        state = read_json(state_file)
        if state.get("fingerprint") != fingerprint:
            raise OfframpError(
                f"{wd} holds an interrupted run with other inputs or hyper-parameters; "
                "pass --fresh to discard it, or another --out"
            )
        return wd, state
    wd.mkdir(parents=True, exist_ok=True)
    state = {"fingerprint": fingerprint, "previous_wall_s": 0.0, "sessions": 0}
    write_json(state_file, state)
    return wd, state


def load_chat_tokenizer(inputs: RunInputs) -> Any:
    """The model's tokenizer; it must carry a chat template (the served prompt), and pads with EOS if it has no pad."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(inputs.model_path)
    if tokenizer.chat_template is None:
        raise OfframpError(f"{inputs.model_ref}: the tokenizer has no chat template; use an instruct/chat model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_finetune(inputs: RunInputs, accelerator: str, extra_callbacks: list | None = None) -> dict[str, Any]:
    r = inputs.recipe
    if inputs.out.exists():
        raise OfframpError(f"{inputs.out} already exists; remove it or choose another --out")
    records = load_chat_jsonl(inputs.data)
    eval_records = load_chat_jsonl(inputs.eval_data) if inputs.eval_data else None
    tokenizer = load_chat_tokenizer(inputs)
    train = build_examples(tokenizer, records, r.max_len, str(inputs.data))
    evals: TokenizedData | None = None
    if eval_records is not None:
        evals = build_examples(tokenizer, eval_records, r.max_len, str(inputs.eval_data))
    if r.method == "qlora":
        check_4bit_training("cuda" if accelerator == "cuda" else "cpu")

    collator = PadCollator(
        tokenizer.pad_token_id, multiple_of=8 if accelerator == "cuda" else 1,
        answer_logits_only=takes_logits_to_keep(inputs.model_path),
    )  # fmt: skip
    done = train_and_report(inputs, accelerator, lambda: _load_model(inputs, accelerator), collator, train, evals,
                            extra_callbacks)  # fmt: skip
    if done is None:
        return {}
    trainer, body, wd = done
    with atomic_dir(inputs.out) as tmp:
        adapter = tmp / "adapter"
        trainer.model.save_pretrained(adapter)
        if inputs.merge:
            _save_merged(inputs, trainer.model, tokenizer, adapter, tmp / "merged")
        write_report(tmp / "finetune_report.json", "finetune", body)
    shutil.rmtree(wd, ignore_errors=True)
    return body


def train_and_report(
    inputs: RunInputs,
    accelerator: str,
    load_model: Callable[[], Any],
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    train: TokenizedData,
    evals: TokenizedData | None,
    extra_callbacks: list | None = None,
) -> tuple[Any, dict[str, Any], Path] | None:
    """Train (resuming a run interrupted with the same inputs) and build the report body; every head shares this.
    Returns (trainer, report body, work dir) on the main process, None on the others."""
    from transformers import PrinterCallback, Trainer, set_seed

    from offramp.finetune.callbacks import GracefulStop, RichProgress

    r = inputs.recipe
    wd, state = _prepare_work_dir(inputs)
    resume = _last_checkpoint(wd)
    set_seed(r.seed)  # before loading: LoRA's A matrices and a new label head are drawn from it, not only the batches
    model = load_model()
    world = _world_size()
    steps_per_epoch = -(-len(train.examples) // (r.batch_size * r.grad_accum * world))
    args = _training_args(inputs, accelerator, steps_per_epoch, wd)
    stop = GracefulStop()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train.examples,
        eval_dataset=evals.examples if evals else None,
        data_collator=collator,
        callbacks=[RichProgress(), stop, *(extra_callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)  # RichProgress reports instead of raw dicts on stdout
    if resume:
        print(f"offramp: resuming from {resume}", flush=True)
    t0 = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        stop.restore()
    session_s = time.perf_counter() - t0
    if stop.requested:
        if trainer.is_world_process_zero():
            state.update(previous_wall_s=state["previous_wall_s"] + session_s, sessions=state["sessions"] + 1)
            write_json(wd / RUN_STATE, state)
        raise Interrupted(
            f"stopped at step {trainer.state.global_step}/{trainer.state.max_steps}; checkpoint saved in {wd}. "
            "Run the same command again to resume."
        )
    eval_metrics = trainer.evaluate() if evals else {}
    if not trainer.is_world_process_zero():
        return None
    wall_s = state["previous_wall_s"] + session_s
    body = _report_body(inputs, trainer, result, train, evals, eval_metrics, wall_s, session_s, resume, state)
    return trainer, body, wd


def _world_size() -> int:
    from accelerate import PartialState

    return PartialState().num_processes


def _save_merged(inputs: RunInputs, model: Any, tokenizer: Any, adapter: Path, dest: Path) -> None:
    """Base + adapter folded into one bf16 safetensors checkpoint (for servers without LoRA support)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if inputs.recipe.method == "qlora":
        # Merge into the full-precision base, not the 4-bit one: the served model must not carry 4-bit rounding.
        base = AutoModelForCausalLM.from_pretrained(inputs.model_path, dtype=torch.float32)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    else:
        merged = model.merge_and_unload()
    write_bf16_checkpoint(merged, tokenizer, dest)


def write_bf16_checkpoint(merged: Any, tokenizer: Any, dest: Path) -> None:
    """One bf16 safetensors checkpoint; the chat template travels with the tokenizer."""
    import torch

    merged = merged.to(torch.bfloat16)
    merged.config.dtype = "bfloat16"
    merged.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def _report_body(
    inputs: RunInputs,
    trainer: Any,
    result: Any,
    train: TokenizedData,
    evals: TokenizedData | None,
    eval_metrics: dict,
    wall_s: float,
    session_s: float,
    resume: str | None,
    state: dict,
) -> dict[str, Any]:
    r = inputs.recipe
    st = trainer.state
    curve = [
        {"step": e["step"], "epoch": round(e.get("epoch", 0.0), 4), "loss": e["loss"], "lr": e.get("learning_rate")}
        for e in st.log_history
        if "loss" in e
    ]
    tokens = st.num_input_tokens_seen
    # Rate over this session only: steps restored from a checkpoint cost nothing now.
    session_tokens = tokens - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    tps = session_tokens / session_s if session_s > 0 else 0.0
    price = inputs.host_price_per_hour
    out = inputs.out
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "base_model": inputs.model_ref,
        "base_model_path": inputs.model_path,
        "adapter_dir": str(out / "adapter"),
        "merged_dir": str(out / "merged") if inputs.merge else None,
        "method": r.method,
        "recipe": r.name,
        "hyperparameters": r.hyperparameters(),
        "trainable_parameters": trainable,
        "data": {
            "train_file": str(inputs.data),
            "train": train.summary(),
            "eval_file": str(inputs.eval_data) if inputs.eval_data else None,
            "eval": evals.summary() if evals else None,
        },
        "steps": st.global_step,
        "epochs": round(st.epoch or 0.0, 4),
        "examples_seen": st.global_step * r.batch_size * r.grad_accum * _world_size(),
        "tokens_seen": tokens,
        "final_train_loss": curve[-1]["loss"] if curve else None,
        "train_loss_mean": result.training_loss,
        "eval_loss": eval_metrics.get("eval_loss"),
        "loss_curve": curve,
        "wall_time_s": round(wall_s, 2),
        "sessions": state["sessions"] + 1,
        "resumed_from": Path(resume).name if resume else None,
        "train_tokens_per_s": round(tps, 1),
        "measured": {"source": "measured", "what": "wall_time_s, train_tokens_per_s (non-padding tokens)"},
        "run_cost_usd": round(wall_s / 3600 * price, 6) if price is not None else None,
        "host_price": (
            {"value": price, "unit": "USD/hour", "source": "user (--host-price-per-hour)"}
            if price is not None
            else None
        ),
    }

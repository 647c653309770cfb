"""The CUDA-only branches of offramp, run where CUDA is (a lent GPU box: scripts/gpu_check.sh), skipped elsewhere.

- finetune, LoRA: on CUDA the base model trains in bf16 on the GPU (finetune.train._load_model / _training_args);
- finetune, QLoRA: the base is loaded as bitsandbytes NF4 on the GPU and a few real steps move the loss;
- serve: a CUDA host is detected as one, and VllmServer launches vLLM compiled, at the checkpoint's dtype
  (tests/test_gpu_args.py parses that argv with vLLM's own parser, on CPU).

Nothing here imports vLLM, or needs the hub or a model store: the tiny random Llama is built here, with offramp's
own builder (offramp.tiny) over a character-level tokenizer made on the spot. The LoRA run is also checked on CPU
(not gpu-marked), so the harness itself is known to work before a GPU ever runs it.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import pytest

from offramp.hardware import torch_sees_cuda

# Also under --noconftest (scripts/gpu_check.sh on a box without the conftest's imports).
NO_CUDA = "needs CUDA: this env's torch sees no CUDA device (offramp.hardware.torch_sees_cuda)"
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch_sees_cuda(), reason=NO_CUDA)]


def needs_cuda(test: Any) -> Any:
    for mark in GPU:
        test = mark(test)
    return test


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ANSWERS = {"add": "card_arrival", "sub": "lost_or_stolen_card", "mul": "exchange_rate", "div": "top_up_failed"}


def char_tokenizer(out: Path) -> Path:
    """A fast tokenizer, one token per printable ASCII character, ChatML turns; saved to `out`."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate([*specials, *dict.fromkeys(string.printable)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.add_special_tokens({"additional_special_tokens": specials[2:]})
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from offramp.tiny import build_tiny_llama

    root = tmp_path_factory.mktemp("gpu-tiny")
    return build_tiny_llama(char_tokenizer(root / "tokenizer"), root / "tiny-random-llama")


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 short chat records, four labels: easy enough that a few steps lower the loss of a random model."""
    path = tmp_path_factory.mktemp("gpu-data") / "train.jsonl"
    rows = []
    for i in range(32):
        op = list(ANSWERS)[i % 4]
        msgs = [{"role": "user", "content": f"{op} {i}"}, {"role": "assistant", "content": ANSWERS[op]}]
        rows.append(json.dumps({"messages": msgs}))
    path.write_text("\n".join(rows) + "\n")
    return path


def probe(batch: dict[str, Any]) -> Any:
    """A Trainer callback recording what the Trainer actually trains (see `describe`) and the model's loss on one
    fixed batch at train begin and at train end."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.seen: dict[str, Any] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.seen = describe(model) | {"bf16": args.bf16, "loss_before": batch_loss(model, batch)}

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self.seen["loss_after"] = batch_loss(model, batch)

    return Probe()


def batch_loss(model: Any, batch: dict[str, Any]) -> float:
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss.item()
    model.train(was_training)
    return loss


def fixed_batch(model: Path, data: Path) -> dict[str, Any]:
    """The first 8 records, tokenized and padded the way the fine-tuning run does it."""
    from transformers import AutoTokenizer

    from offramp.data import load_chat_jsonl
    from offramp.finetune.dataset import PadCollator, build_examples

    tok = AutoTokenizer.from_pretrained(model)
    examples = build_examples(tok, load_chat_jsonl(data)[:8], 128, str(data)).examples
    return PadCollator(tok.pad_token_id)(examples)


def describe(model: Any) -> dict[str, Any]:
    """Where the weights live, the frozen base's dtypes, how many tensors train, the 4-bit layers' types."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    trained = [p for p in model.parameters() if p.requires_grad]
    # bitsandbytes' own layers (peft's LoRA wrapper around each one is also named Linear4bit)
    four_bit = [m for m in model.modules() if type(m).__module__.startswith("bitsandbytes")]
    return {
        "devices": {p.device.type for p in model.parameters()},
        "base_float_dtypes": {p.dtype for p in frozen if p.dtype.is_floating_point},
        "base_int_dtypes": {p.dtype for p in frozen if not p.dtype.is_floating_point},
        "n_trained": len(trained),
        "quant_types": {getattr(m.weight, "quant_type", None) for m in four_bit},
        "compute_dtypes": {getattr(m, "compute_dtype", None) for m in four_bit},
    }


def finetune(model: Path, data: Path, out: Path, method: str, accelerator: str) -> tuple[dict, dict]:
    """offramp's own fine-tuning run (finetune.train.run_finetune) for 12 steps; (report, what the probe saw)."""
    from offramp.finetune.recipe import Recipe
    from offramp.finetune.train import RunInputs, run_finetune

    recipe = Recipe(method=method, rank=8, alpha=16, max_steps=12, lr=1e-2, batch_size=8, logging_steps=1, warmup=0)
    seen = probe(fixed_batch(model, data))
    inputs = RunInputs(model_ref="tiny", model_path=str(model), data=data, eval_data=None, recipe=recipe, out=out)
    report = run_finetune(inputs, accelerator, extra_callbacks=[seen])
    return report, seen.seen


def assert_loss_moved(report: dict, seen: dict) -> None:
    """12 steps were logged, every loss finite, and the loss on a fixed batch went clearly down."""
    losses = [p["loss"] for p in report["loss_curve"]]
    assert report["steps"] == 12 and len(losses) == 12, losses
    assert all(math.isfinite(x) for x in losses), losses
    assert seen["loss_after"] < seen["loss_before"] - 0.05, (seen["loss_before"], seen["loss_after"], losses)


# --- finetune -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator", [pytest.param("cuda", marks=GPU), "cpu"])
def test_lora_trains_against_a_bf16_base_on_cuda_and_fp32_on_cpu(
    tiny_llama: Path, chat_data: Path, tmp_path: Path, accelerator: str
) -> None:
    import torch

    report, seen = finetune(tiny_llama, chat_data, tmp_path / "ft", "lora", accelerator)
    assert seen["devices"] == {accelerator}
    assert seen["base_float_dtypes"] == {torch.bfloat16 if accelerator == "cuda" else torch.float32}
    assert seen["bf16"] is (accelerator == "cuda")
    assert seen["n_trained"] > 0 and seen["quant_types"] == set()
    assert_loss_moved(report, seen)
    assert (tmp_path / "ft" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("accelerator", [pytest.param("cuda", marks=GPU), "cpu"])
def test_qlora_trains_lora_on_an_nf4_base(tiny_llama: Path, chat_data: Path, tmp_path: Path, accelerator: str) -> None:
    """NF4 base weights on the GPU, computing in bf16 (fp32 on CPU, where bitsandbytes' CPU backend runs it)."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes")
    import torch

    from offramp.errors import NotSupportedHere

    try:
        report, seen = finetune(tiny_llama, chat_data, tmp_path / "ft", "qlora", accelerator)
    except NotSupportedHere as e:
        if accelerator == "cuda":
            raise
        pytest.skip(f"bitsandbytes 4-bit does not run on this CPU: {e}")
    assert seen["devices"] == {accelerator}
    assert seen["quant_types"] == {"nf4"}
    assert seen["compute_dtypes"] == {torch.bfloat16 if accelerator == "cuda" else torch.float32}
    assert torch.uint8 in seen["base_int_dtypes"]  # the packed 4-bit weights
    assert seen["n_trained"] > 0
    assert_loss_moved(report, seen)
    assert report["method"] == "qlora"


# --- serve ------------------------------------------------------------------------------------------------------


@needs_cuda
def test_cuda_host_is_detected_and_serves_compiled(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No OFFRAMP_ACCELERATOR: offramp must see this CUDA host as one (nvidia-smi) and launch vLLM accordingly."""
    pytest.importorskip("httpx", reason="offramp.serve.server needs httpx")
    from offramp.envs import accelerator, lock_file
    from offramp.serve.server import VllmServer

    monkeypatch.delenv("OFFRAMP_ACCELERATOR", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert accelerator() == "cuda"
    assert lock_file("runtime").name == "runtime-gpu.lock"
    server = VllmServer(tiny_llama, port=8000, tensor_parallel=1)
    cmd = server.command()
    assert "--enforce-eager" not in cmd
    assert "--dtype" not in cmd
    assert "VLLM_CPU_KVCACHE_SPACE" not in server.environment()

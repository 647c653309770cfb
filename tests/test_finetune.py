"""offramp finetune: label masking, real LoRA / QLoRA steps on the tiny model, reload, merge, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import chat_record, finetune_result

from offramp.errors import OfframpError

SYSTEM = "Classify the customer banking query into one intent label. Answer with the label only."
LABELS = ["card_arrival", "card_linking", "exchange_rate", "lost_or_stolen_card", "top_up_failed", "pin_blocked"]
QUERIES = [
    "Where is my new card?",
    "How do I link my card to the app?",
    "What rate do you use for euros?",
    "Someone took my card",
    "My top up did not go through",
    "I typed the wrong PIN too often",
    "The card still has not arrived",
    "Can I connect a card I already have?",
]


def chat(query: str, label: str) -> dict:
    return chat_record(SYSTEM, query, label)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    recs = [chat(q, LABELS[i % len(LABELS)]) for i, q in enumerate(QUERIES)]
    return write_jsonl(tmp_path_factory.mktemp("ftdata") / "train.jsonl", recs)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_only_assistant_tokens_carry_labels(tokenizer) -> None:
    from offramp.finetune.dataset import IGNORE, tokenize_chat

    msgs = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "card_arrival"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "pin_blocked"},
    ]
    ex = tokenize_chat(tokenizer, msgs)
    assert len(ex["input_ids"]) == len(ex["labels"])
    # Rendering the ids gives back exactly the chat template's text.
    assert tokenizer.decode(ex["input_ids"]) == tokenizer.apply_chat_template(msgs, tokenize=False)
    kept = [i for i, x in enumerate(ex["labels"]) if x != IGNORE]
    assert all(ex["labels"][i] == ex["input_ids"][i] for i in kept)
    # The trained tokens are the two answers, each with its end-of-turn token, and nothing else.
    runs, cur = [], []
    for i in range(len(ex["labels"])):
        if ex["labels"][i] != IGNORE:
            cur.append(ex["input_ids"][i])
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    assert runs == [f"card_arrival{tokenizer.eos_token}", f"pin_blocked{tokenizer.eos_token}"]


def test_pad_collator_masks_padding(tokenizer) -> None:
    from offramp.finetune.dataset import IGNORE, PadCollator, tokenize_chat

    a = tokenize_chat(tokenizer, chat("short", "pin_blocked")["messages"])
    b = tokenize_chat(
        tokenizer, chat("a much longer question about my card that never came", "card_arrival")["messages"]
    )
    batch = PadCollator(tokenizer.pad_token_id)([a, b])
    n = len(a["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(b["input_ids"]))
    assert batch["attention_mask"][0, :n].all() and not batch["attention_mask"][0, n:].any()
    assert (batch["labels"][0, n:] == IGNORE).all()
    assert batch["labels"][0, :n].tolist() == a["labels"]
    assert batch["attention_mask"][1].all()


def test_answer_only_logits_give_the_full_loss_and_its_gradients(tiny_model: Path, tokenizer) -> None:
    """The LM head run only where the next token is an answer token: the same loss and LoRA gradients as over
    every position, from a fraction of the positions."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from offramp.finetune.dataset import PadCollator, tokenize_chat
    from offramp.finetune.train import takes_logits_to_keep

    assert takes_logits_to_keep(str(tiny_model))
    examples = [tokenize_chat(tokenizer, chat(q, LABELS[i % len(LABELS)])["messages"]) for i, q in enumerate(QUERIES)]
    full = PadCollator(tokenizer.pad_token_id)(examples)
    sliced = PadCollator(tokenizer.pad_token_id, answer_logits_only=True)(examples)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    n_items = full["labels"][:, 1:].ne(-100).sum()  # how the Trainer normalises (num_items_in_batch)
    results = []
    for batch in (full, sliced):
        model.zero_grad()
        out = model(**batch, num_items_in_batch=n_items)
        out.loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        results.append((out.loss.item(), grads, out.logits.shape))
    (loss_full, grads_full, shape_full), (loss_sliced, grads_sliced, shape_sliced) = results
    assert shape_sliced[1] < shape_full[1] / 2, (shape_sliced, shape_full)  # the prompt positions were skipped
    assert loss_sliced == pytest.approx(loss_full, rel=1e-5)
    for a, b in zip(grads_full, grads_sliced, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_all_records_too_long_is_an_error(tokenizer) -> None:
    from offramp.finetune.dataset import build_examples

    with pytest.raises(OfframpError, match="longer than --max-len 10"):
        build_examples(tokenizer, [chat(q, "card_arrival") for q in QUERIES], 10, "x.jsonl")
    data = build_examples(tokenizer, [chat(q, "card_arrival") for q in QUERIES] + [chat("word " * 200, "x")], 64, "x")
    assert data.dropped_too_long == 1 and len(data.examples) == len(QUERIES)


def test_recipe_layers(tmp_path: Path) -> None:
    from offramp.finetune.recipe import load_recipe

    default = load_recipe("default", "cpu", {})
    assert default.name == "default" and default.target_modules == "all-linear"
    assert load_recipe("default", "cuda", {}).batch_size != default.batch_size or default.per_hardware == {}
    assert load_recipe("default", "cpu", {"lr": 0.1, "rank": None}).lr == 0.1
    full = load_recipe("full", "cpu", {})
    # the whole training set, not a step budget; the GPU section layers more passes on top
    assert full.max_steps is None and full.epochs >= 1
    assert load_recipe("full", "cuda", {}).epochs == full.per_hardware["cuda"]["epochs"] > full.epochs
    bad = tmp_path / "bad.yaml"
    bad.write_text("rank: 8\nlearning_rate: 0.1\n")
    with pytest.raises(OfframpError, match="learning_rate"):
        load_recipe(str(bad), "cpu", {})


def test_key_value_overrides_are_validated_by_the_recipe(tmp_path: Path) -> None:
    from offramp.finetune.recipe import load_recipe, parse_overrides

    pairs = ["dropout=0.1", "warmup=10", "scheduler=linear", "target_modules=q_proj,v_proj", "lr=2e-3", "rank=4"]
    got = load_recipe("default", "cpu", {"rank": 32, "lr": None}, parse_overrides(pairs))
    assert (got.dropout, got.warmup, got.scheduler, got.lr, got.rank) == (0.1, 10, "linear", 0.002, 4)
    assert got.target_modules == ["q_proj", "v_proj"]
    assert load_recipe("default", "cpu", {}).max_steps is not None
    assert load_recipe("default", "cpu", {}, parse_overrides(["max-steps=null"])).max_steps is None
    assert load_recipe("default", "cpu", {}, parse_overrides(["epochs=2"])).max_steps is None  # epochs beats steps
    with pytest.raises(OfframpError, match="no hyper-parameter 'dropuot'"):
        parse_overrides(["dropuot=0.1"])
    with pytest.raises(OfframpError, match="expected KEY=VALUE"):
        parse_overrides(["0.1"])
    with pytest.raises(OfframpError, match="dropout"):
        load_recipe("default", "cpu", {}, parse_overrides(["dropout=1.5"]))


@pytest.fixture(scope="module")
def trained(tiny_model: Path, train_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real CLI run: 12 LoRA steps on one fixed batch of 8 records, merged, with a run cost."""
    from conftest import run_cli

    out = tmp_path_factory.mktemp("ft") / "run"
    res = run_cli(
        "finetune", str(tiny_model), "--data", str(train_file), "--eval-data", str(train_file),
        "--max-steps", "12", "--batch-size", "8", "--lr", "0.01", "--rank", "8", "--out", str(out), "--merge",
        "--host-price-per-hour", "2.0", "dropout=0.05", "scheduler=constant",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_training_lowers_loss_and_reports(trained: Path) -> None:
    report, body, curve = finetune_result(trained)
    assert body["steps"] == 12 and len(curve) == 12
    assert curve[-1] < curve[0] - 0.3, curve  # same batch every step: the loss must fall (nats)
    assert body["data"]["train"]["examples"] == len(QUERIES)
    assert body["eval_loss"] is not None and body["eval_loss"] < curve[0]
    assert report.train_tokens_per_s > 0 and report.wall_time_s > 0
    # wall_time_s is rounded in the report; on a 3 s run that alone moves the cost by ~0.1 %
    assert report.run_cost_usd == pytest.approx(report.wall_time_s / 3600 * 2.0, rel=1e-3, abs=1e-5)
    assert report.hardware["cpu_cores"] >= 1
    assert (body["hyperparameters"]["scheduler"], body["hyperparameters"]["dropout"]) == ("constant", 0.05)
    assert not (trained.parent / f".{trained.name}.work").exists()  # checkpoints cleaned up after success


def test_the_recipe_seed_makes_a_run_repeatable(tiny_model: Path, train_file: Path, tmp_path: Path) -> None:
    """The seed fixes LoRA's random A matrices too, not only the batch order: two runs give the same adapter."""
    from conftest import run_cli
    from safetensors.torch import load_file

    def adapter(name: str, *overrides: str) -> dict:
        out = tmp_path / name
        res = run_cli("finetune", str(tiny_model), "--data", str(train_file), "--max-steps", "2", "--batch-size", "4",
                      "--lr", "0.01", "--rank", "8", "--out", str(out), *overrides)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        return load_file(out / "adapter" / "adapter_model.safetensors")

    first, again, other = adapter("a"), adapter("b"), adapter("c", "seed=1")
    assert first.keys() == again.keys() == other.keys()
    assert all(first[k].equal(again[k]) for k in first)
    assert not all(first[k].equal(other[k]) for k in first)


def test_adapter_reloads_merges_and_generates(trained: Path, tiny_model: Path, tokenizer) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["peft_type"] == "LORA"
    assert cfg["lora_dropout"] == 0.05  # a KEY=VALUE override on the command line reaches peft
    assert {"q_proj", "down_proj"} <= set(cfg["target_modules"])
    ids = tokenizer.apply_chat_template(chat(QUERIES[0], "")["messages"][:2], add_generation_prompt=True)
    ids = torch.tensor([ids["input_ids"] if hasattr(ids, "keys") else ids])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits
        tuned = PeftModel.from_pretrained(base, trained / "adapter").eval()
        tuned_logits = tuned(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(trained / "merged", dtype=torch.float32).eval()
        merged_logits = merged(ids).logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-3)
    assert torch.allclose(tuned_logits, merged_logits, atol=0.05, rtol=0.05)  # merged is stored in bf16
    assert json.loads((trained / "merged" / "config.json").read_text())["dtype"] == "bfloat16"
    assert (trained / "merged" / "model.safetensors").is_file()
    out = merged.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert out.shape[1] > ids.shape[1]


def test_label_likelihood_argmax_is_exact(tiny_model: Path, tokenizer) -> None:
    """The best-first trie search must pick the same label as scoring every label in full."""
    import torch
    from transformers import AutoModelForCausalLM

    from offramp.evals.scorers import LabelTrieArgmax, label_token_ids, prompt_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompts = [chat(q, "")["messages"][:2] for q in QUERIES[:4]]
    got = LabelTrieArgmax(model, tokenizer, expand_batch=3).best_labels(prompts, LABELS)
    for messages, (label, score) in zip(prompts, got, strict=True):
        p = prompt_ids(tokenizer, messages)
        full = []
        for seq in label_token_ids(tokenizer, LABELS):
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([p + seq])).logits[0].float(), -1)
            full.append(sum(logp[len(p) - 1 + k, t].item() for k, t in enumerate(seq)))
        best = max(range(len(LABELS)), key=full.__getitem__)
        assert label == LABELS[best]
        assert score == pytest.approx(full[best], abs=1e-3)


def test_prefix_constrained_greedy_decodes_the_best_allowed_token_each_step(tiny_model: Path, tokenizer) -> None:
    """hf-prefix-constrained-greedy, batched with left padding, must pick what one-query-at-a-time greedy decoding
    over the label tokens picks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offramp.evals.scorers import PrefixConstrainedGreedy, label_token_ids, prompt_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    left = AutoTokenizer.from_pretrained(tiny_model, padding_side="left")
    prompts = [chat(q, "")["messages"][:2] for q in QUERIES[:5]]
    scorer = PrefixConstrainedGreedy(model, left, batch_size=2)
    assert scorer.name == "hf-prefix-constrained-greedy"
    got = scorer.predict(prompts, LABELS)
    seqs = label_token_ids(tokenizer, LABELS)
    for messages, pred in zip(prompts, got, strict=True):
        ids, picked = prompt_ids(tokenizer, messages), []
        while picked not in seqs:
            allowed = {s[len(picked)] for s in seqs if s[: len(picked)] == picked and len(s) > len(picked)}
            with torch.no_grad():
                logits = model(torch.tensor([ids + picked])).logits[0, -1]
            picked.append(max(allowed, key=lambda t: logits[t].item()))
        assert pred == seqs.index(picked)


def test_interrupt_then_resume_finishes(tiny_model: Path, train_file: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("rank: 4\nlr: 0.005\nbatch_size: 2\nsave_steps: 3\nlogging_steps: 1\nmax_steps: 30\n")
    out = tmp_path / "run"
    work = tmp_path / ".run.work"
    args = ["finetune", str(tiny_model), "--data", str(train_file), "--recipe", str(recipe), "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "offramp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (work / "checkpoint-3").is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Run the same command again to resume" in err
    assert not out.exists()
    saved = sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*"))
    assert saved and 3 <= saved[-1] < 30

    other = run_cli(*args, "lr=0.006")  # another hyper-parameter: resuming would mix two runs in one adapter
    assert other.returncode != 0 and "holds an interrupted run with other inputs" in other.stderr
    assert "--fresh" in other.stderr and "Traceback" not in other.stderr
    assert (work / f"checkpoint-{saved[-1]}").is_dir() and not out.exists()  # refused, nothing touched

    res = run_cli(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"resuming from {work / f'checkpoint-{saved[-1]}'}" in res.stdout
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["steps"] == 30 and report["sessions"] == 2
    assert report["resumed_from"] == f"checkpoint-{saved[-1]}"
    assert [p["step"] for p in report["loss_curve"]] == list(range(1, 31))
    assert not work.exists()

    # --fresh discards a stale interrupted run (here: one with other inputs) and starts from step 0
    out2, work2 = tmp_path / "run2", tmp_path / ".run2.work"
    (work2 / "checkpoint-7").mkdir(parents=True)
    (work2 / "offramp_run.json").write_text(json.dumps({"fingerprint": "stale", "previous_wall_s": 9.0, "sessions": 3}))
    fresh = run_cli(*args[:-1], str(out2), "max_steps=2", "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    report = json.loads((out2 / "finetune_report.json").read_text())
    assert report["steps"] == 2 and report["sessions"] == 1 and report["resumed_from"] is None
    assert not work2.exists()


def test_qlora_trains_on_this_host(tiny_model: Path, train_file: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    out = tmp_path / "q"
    res = run_cli(
        "finetune", str(tiny_model), "--data", str(train_file), "--method", "qlora",
        "--max-steps", "2", "--batch-size", "4", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["method"] == "qlora" and report["steps"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


BAD = {
    "not_chat": ([json.dumps(chat("q", "card_arrival")), json.dumps({"prompt": "q", "completion": "a"})], [], ":2:"),
    "no_assistant": ([json.dumps({"messages": [{"role": "user", "content": "hello"}]})], [], "assistant"),
    "all_too_long": ([json.dumps(chat(q, "card_arrival")) for q in QUERIES], ["--max-len", "12"], "--max-len 12"),
    "bad_override": ([json.dumps(chat(q, "card_arrival")) for q in QUERIES], ["lr=-1"], "lr: Input should be"),
    "unknown_override": ([json.dumps(chat(q, "card_arrival")) for q in QUERIES], ["rnak=8"], "no hyper-parameter"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_clear_error(case: str, tiny_model: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    lines, extra, needle = BAD[case]
    data = write_jsonl(tmp_path / "d.jsonl", lines)
    out = tmp_path / "out"
    res = run_cli("finetune", str(tiny_model), "--data", str(data), "--out", str(out), *extra)
    assert res.returncode == 1, res.stderr
    err = res.stderr.strip().splitlines()
    assert err[-1].startswith("offramp: error:") and needle in err[-1], res.stderr
    assert not out.exists() and not (tmp_path / ".out.work").exists()


def test_qlora_without_working_bitsandbytes_exits_2(tiny_model: Path, train_file: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    shim = tmp_path / "shim" / "bitsandbytes"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('bitsandbytes has no backend for this device')\n")
    out = tmp_path / "out"
    env = {"PYTHONPATH": os.pathsep.join([str(shim.parent), os.environ.get("PYTHONPATH", "")])}
    res = run_cli(
        "finetune", str(tiny_model), "--data", str(train_file), "--method", "qlora", "--out", str(out), env=env
    )
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("offramp: error: QLoRA needs bitsandbytes") and "--method lora" in last
    assert not out.exists() and not (tmp_path / ".out.work").exists()

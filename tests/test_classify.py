"""offramp finetune --head classify: a real peft SEQ_CLS run on the tiny model, its merged checkpoint served by
vLLM's pooling runner (POST /classify) against transformers' softmax, and the bad-input lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import chat_record, finetune_result, run_cli

SYSTEM = "Route the banking query to one queue."
LABELS = ["cards", "loans", "transfers"]
QUERIES = {
    "cards": ["my card is lost", "card blocked again", "new card please", "card pin forgotten", "card not arriving"],
    "loans": ["loan interest rate", "apply for a loan", "loan repayment date", "extend my loan", "loan was refused"],
    "transfers": ["send money abroad", "transfer is pending", "wire to my friend", "transfer limit", "undo transfer"],
}


def chat(query: str, label: str) -> dict:
    return chat_record(SYSTEM, query, label)


def write_task(d: Path, records: list[dict], labels: list[str] | None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if labels is not None:
        (d / "labels.json").write_text(json.dumps(labels))
    return d / "train.jsonl"


def records() -> list[dict]:
    # 30 rows: each query twice, so the full batch is the same every step and the loss must fall. At lr 3e-3 AdamW
    # overshot on one CI host (0.90 at step 6, 1.37 at step 10); at 1e-3 the fall is smooth (1.11 -> 0.46 here).
    return [chat(q, label) for label, qs in QUERIES.items() for q in qs] * 2


@pytest.fixture(scope="module")
def classifier(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = write_task(tmp_path_factory.mktemp("clsdata"), records(), LABELS)
    out = tmp_path_factory.mktemp("cls") / "run"
    res = run_cli(
        "finetune", str(tiny_model), "--data", str(data), "--head", "classify", "--max-steps", "16",
        "--batch-size", "30", "--lr", "0.001", "--rank", "8", "--out", str(out), "scheduler=constant",
        "logging_steps=1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def test_classifier_training_moves_the_loss_and_writes_a_seq_cls_checkpoint(classifier: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    _, body, curve = finetune_result(classifier)
    assert body["head"] == "classify" and body["labels"] == LABELS and body["steps"] == 16
    assert curve[0] == pytest.approx(1.0986, abs=0.35), curve  # a fresh head over 3 labels: about ln 3 nats
    assert curve[-1] < curve[0] - 0.2, curve  # same batch every step: cross-entropy must fall
    assert body["data"]["train"]["examples"] == 30
    merged = classifier / "merged"
    config = json.loads((merged / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    model = AutoModelForSequenceClassification.from_pretrained(merged, dtype=torch.float32)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert model.config.pad_token_id is not None
    assert (classifier / "adapter" / "adapter_config.json").is_file()


def reference_probs(merged: Path, prompts: list[str], dtype: str):
    """transformers' softmax over the labels, one prompt at a time (no padding), in the server's dtype. A W8A8
    checkpoint gets its per-token INT8 activations too, which transformers does not apply on load but vLLM runs."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from offramp.quantize.llmc import add_activation_quant

    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForSequenceClassification.from_pretrained(merged, dtype=getattr(torch, dtype)).eval()
    qconfig = json.loads((merged / "config.json").read_text()).get("quantization_config")
    if qconfig:
        assert add_activation_quant(model, qconfig["ignore"]) > 0
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, add_special_tokens=False, return_tensors="pt")
            out.append(torch.softmax(model(**ids).logits[0].float(), -1).tolist())
    return out


def served_dtype() -> str:
    from offramp.hardware import model_dtype

    return "float32" if model_dtype("serve", "cpu") == "float32" else "bfloat16"  # auto: the checkpoint's bf16


def assert_served_like_transformers(server, checkpoint: Path, tol_bf16: float, tol_fp32: float) -> None:
    from transformers import AutoTokenizer

    from offramp.finetune.classify import prompt_text

    assert "--runner" in server.command() and "pooling" in server.command()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    queries = ["card blocked again", "apply for a loan", "send money abroad", "my card is lost"]
    prompts = [prompt_text(tok, chat(q, "?")["messages"]) for q in queries]
    body = {"model": server.model_name, "input": prompts, "add_special_tokens": False}
    with server.client() as client:
        r = client.post("/classify", json=body)
    assert r.status_code == 200, r.text
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    served = served_dtype()
    want = reference_probs(checkpoint, prompts, served)
    tol = tol_bf16 if served == "bfloat16" else tol_fp32
    for got, ref in zip(data, want, strict=True):
        assert got["num_classes"] == len(LABELS)
        assert got["probs"] == pytest.approx(ref, abs=tol), (got, ref)
        best = max(range(len(LABELS)), key=lambda i: ref[i])
        margin = ref[best] - sorted(ref)[-2]
        if margin > 2 * tol:  # a near-tie can flip under rounding; a clear winner must not
            assert got["label"] == LABELS[best], (got, ref)


@pytest.mark.vllm
def test_vllm_pooling_runner_classifies_like_transformers(classifier: Path, vllm_servers) -> None:
    merged = classifier / "merged"
    # bf16 keeps 8 mantissa bits (~0.4 % per rounding); vLLM's CPU kernels round in other places than torch's,
    # which over the tiny model's layers moves 3-way probabilities by up to ~1e-2. fp32 agrees far closer.
    assert_served_like_transformers(vllm_servers(merged), merged, tol_bf16=3e-2, tol_fp32=1e-3)


@pytest.mark.vllm
def test_w8a8_classifier_keeps_its_labels_and_is_served_like_transformers_runs_it(
    classifier: Path, tmp_path: Path
) -> None:
    """offramp quantize on a classifier: INT8 weights and activations, the label head kept in bf16, checked on the
    labels it gives (not perplexity); vLLM's pooling runner then serves it with the INT8 kernels."""
    from offramp.serve.server import VllmServer

    data = write_task(tmp_path / "d", records(), LABELS)
    out = tmp_path / "w8a8"
    res = run_cli("quantize", str(classifier / "merged"), "--method", "w8a8-int8-rtn", "--calib", str(data),
                  "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    from offramp.artifacts import load_report

    report = load_report(out / "quantize_report.json", "quantize")
    extra = report.model_extra
    assert report.head == "classify" and report.perplexity is None
    assert report.label_agreement >= 0.9 and extra["reload_check"]["passed"]
    assert 0 <= report.accuracy <= 1 and extra["heldout"]["samples"] == 6  # the file's tail: 30 records // 5
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["id2label"] == {str(i): label for i, label in enumerate(LABELS)}
    qconfig = config["quantization_config"]
    assert "score" in qconfig["ignore"] and "lm_head" not in qconfig["ignore"]
    assert qconfig["config_groups"]["group_0"]["input_activations"]["num_bits"] == 8
    with VllmServer(out, max_model_len=2048) as server:
        # INT8 activations are rounded from values that differ by the same bf16 / kernel rounding as above, and a
        # flipped INT8 step moves a tiny model's probabilities more than one bf16 rounding does.
        assert_served_like_transformers(server, out, tol_bf16=5e-2, tol_fp32=1e-2)
        # vLLM ran the INT8 kernels, not a dequantized copy the tolerance above might not tell apart
        assert "CompressedTensorsW8A8Int8" in server.log_path.read_text(errors="replace")


def test_quantize_refuses_what_a_classifier_cannot_take_in_one_line(classifier: Path, tmp_path: Path) -> None:
    merged, out = classifier / "merged", tmp_path / "q"
    # held out: the file's last 6 records (31 // 5), the last of them labelled outside the head's three
    other = str(write_task(tmp_path / "other", [*records(), chat("close my account", "accounts")], LABELS))
    lm_only = "quantizes causal LMs only; a classifier takes w8a8-int8, w8a8-int8-rtn"
    cases = {
        f"--method bnb-nf4 {lm_only}": ("--method", "bnb-nf4"),
        f"--method gptq-w4a16 {lm_only}": ("--method", "gptq-w4a16"),
        # the built-in calibration set's held-out labels are Banking77's, not this head's three
        "test split: record 1 has label '": ("--method", "w8a8-int8-rtn"),
        "record 6 has label 'accounts', which is not in the classifier's labels (config.json id2label)": (
            "--method", "w8a8-int8-rtn", "--calib", other),
        "--min-agreement 1.5: a share between 0 and 1": (
            "--method", "w8a8-int8-rtn", "--calib", other, "--min-agreement", "1.5"),
    }  # fmt: skip
    for message, args in cases.items():
        res = run_cli("quantize", str(merged), *args, "--out", str(out))
        assert res.returncode == 1, (args, res.stderr[-2000:])
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("offramp: error:") and message in last, last
        assert not out.exists()


def test_missing_labels_json_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    data = write_task(tmp_path / "d", records(), None)
    res = run_cli("finetune", str(tiny_model), "--data", str(data), "--head", "classify", "--out", str(tmp_path / "o"))
    assert res.returncode != 0
    assert "no labels.json beside" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()


def test_label_outside_labels_json_is_one_line(tiny_model: Path, tmp_path: Path) -> None:
    data = write_task(tmp_path / "d", [*records(), chat("close my account", "accounts")], LABELS)
    out = tmp_path / "o"
    res = run_cli("finetune", str(tiny_model), "--data", str(data), "--recipe", "classify", "--out", str(out))
    assert res.returncode != 0
    assert "record 31 has label 'accounts', which is not in labels.json" in res.stderr
    assert "Traceback" not in res.stderr and not out.exists()


def test_classifier_checkpoint_on_the_lm_path_is_one_line(classifier: Path, tmp_path: Path) -> None:
    data = write_task(tmp_path / "d", records(), LABELS)
    res = run_cli("finetune", str(classifier / "merged"), "--data", str(data), "--out", str(tmp_path / "o"))
    assert res.returncode != 0
    assert "is a sequence-classification checkpoint (LlamaForSequenceClassification)" in res.stderr
    assert "--head classify" in res.stderr and "Traceback" not in res.stderr


def test_serve_command_uses_the_pooling_runner_for_classifiers_only(tmp_path: Path) -> None:
    from offramp.errors import OfframpError
    from offramp.serve.server import VllmServer

    for name, arch in (("cls", "LlamaForSequenceClassification"), ("lm", "LlamaForCausalLM")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"architectures": [arch]}))
    cls_cmd = VllmServer(tmp_path / "cls", port=8123).command()
    lm_cmd = VllmServer(tmp_path / "lm", port=8123).command()
    assert cls_cmd[cls_cmd.index("--runner") + 1] == "pooling"
    assert "--runner" not in lm_cmd and "--enable-prefix-caching" in lm_cmd
    with pytest.raises(OfframpError, match="takes no LoRA adapters"):
        VllmServer(tmp_path / "cls", adapters={"a": tmp_path / "lm"})


CHAT_QUERIES = ["card blocked again", "apply for a loan", "send money abroad", "transfer limit"]


def served_reference(classifier: Path, queries: list[str]) -> tuple[list[list[float]], float]:
    """transformers' label probabilities for each query as served (chat template, generation prompt), and the
    tolerance that holds in the server's dtype (see the pooling test above)."""
    from transformers import AutoTokenizer

    from offramp.finetune.classify import prompt_text

    merged = classifier / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    served = served_dtype()
    probs = reference_probs(merged, [prompt_text(tok, chat(q, "?")["messages"]) for q in queries], served)
    return probs, (3e-2 if served == "bfloat16" else 1e-3)


@pytest.mark.vllm
def test_chat_face_answers_the_label_through_the_official_openai_client(classifier: Path, vllm_servers) -> None:
    """#19.3: clients keep calling /v1/chat/completions; the router asks /classify and answers with the label, the
    probabilities in `offramp_probs`, the confidence in x-offramp-confidence. No fallback: every answer is local."""
    from openai import OpenAI

    from offramp.serve.cascade import CascadeSettings, Router
    from offramp.serve.server import free_port

    server = vllm_servers(classifier / "merged")
    want, tol = served_reference(classifier, CHAT_QUERIES)
    cfg = CascadeSettings(server.api_base, server.model_name, None, 0.0, labels=LABELS, local_kind="classify")
    with Router(cfg, port=free_port()) as router:
        client = OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0)
        for query, ref in zip(CHAT_QUERIES, want, strict=True):
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}]
            raw = client.chat.completions.with_raw_response.create(model="offramp-cascade", messages=messages)
            completion = raw.parse()
            answer = completion.choices[0].message.content
            probs = completion.model_extra["offramp_probs"]
            assert list(probs) == LABELS and [probs[label] for label in LABELS] == pytest.approx(ref, abs=tol)
            assert answer == max(probs, key=probs.get)  # the most probable label is the answer
            best = max(range(len(LABELS)), key=lambda i: ref[i])
            if ref[best] - sorted(ref)[-2] > 2 * tol:
                assert answer == LABELS[best], (query, ref, probs)
            assert float(raw.headers["x-offramp-confidence"]) == pytest.approx(probs[answer], abs=1e-5)
            assert raw.headers["x-offramp-route"] == "local" and completion.model == f"local:{server.model_name}"
            assert completion.usage.completion_tokens == 0 and completion.usage.prompt_tokens > 10
        passthrough = httpx.post(
            f"{router.url}/classify", json={"model": server.model_name, "input": ["hello"]}, timeout=60
        )
        assert passthrough.status_code == 200 and passthrough.json()["data"][0]["num_classes"] == len(LABELS)


@pytest.mark.vllm
def test_bench_drives_the_classifier_through_pooling_and_break_even_prices_input_only(
    classifier: Path, vllm_servers, tmp_path: Path
) -> None:
    """#19.4: `offramp bench` on the chat face's URL drives vLLM's pooling path (vllm bench serve, /pooling task
    classify) and prices a request by its input alone; the break-even's capacity then ignores output tokens."""
    from offramp.serve.cascade import CascadeSettings, Router
    from offramp.serve.server import free_port

    server = vllm_servers(classifier / "merged")
    load = tmp_path / "load.jsonl"
    load.write_text("".join(json.dumps(r) + "\n" for r in records()[:15]))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(LABELS))
    cfg = CascadeSettings(server.api_base, server.model_name, None, 0.0, labels=LABELS, local_kind="classify")
    bench = ["bench", "--workload", str(load), "--concurrency", "1,4", "--num-prompts", "12"]
    with Router(cfg, port=free_port()) as router:
        res = run_cli(*bench, router.url, "--host-price-per-hour", "0.36", "--out", str(tmp_path / "b"))
        assert res.returncode == 0, res.stderr[-3000:]
        bad = run_cli(*bench, router.url, "--structured-choice", str(labels), "--out", str(tmp_path / "bad"))
    assert bad.returncode != 0 and "is a classifier" in bad.stderr and not (tmp_path / "bad").exists()
    assert "$ per 1M requests" in res.stdout
    report = json.loads((tmp_path / "b" / "bench_report.json").read_text())
    assert report["model"] == server.model_name and report["settings"]["endpoint_kind"].startswith("classifier")
    for p in report["points"]:
        assert (p["completed"], p["failed"], p["output_tokens"]) == (12, 0, 0) and p["requests_per_s"] > 0
        # vLLM counted exactly the tokens the chat template rendered here: nothing added or dropped on the way
        assert p["input_tokens"] == report["workload"]["prompt_tokens_per_level"]
        assert 0 < p["ttft_ms"]["p50"] <= p["ttft_ms"]["p99"]
    floor, sustainable = report["cost"]["fully_utilised_floor"], report["sustainable"]
    assert floor["output"] is None
    assert floor["per_million_requests"] == pytest.approx(0.36 / 3600 / sustainable["requests_per_s"] * 1e6, rel=1e-3)
    costs = {}
    for out_tokens in (3, 300):
        out = tmp_path / f"be{out_tokens}"
        res = run_cli("breakeven", "--api", "gpt-4o-mini", "--bench", str(tmp_path / "b" / "bench_report.json"),
                      "--requests-per-month", "1000000", "--output-tokens", str(out_tokens),
                      "--input-tokens", str(report["workload"]["prompt_tokens_mean"]),
                      "--host-price-per-hour", "0.36", "--out", str(out))  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        body = json.loads((out / "breakeven_report.json").read_text())
        costs[out_tokens] = (body["self_hosted"]["cost"]["capacity_rps"]["value"],
                             body["api"]["cost"]["monthly_usd"]["value"])  # fmt: skip
        assert "generates no tokens" in body["self_hosted"]["split_rule"]
    assert costs[3][0] == pytest.approx(costs[300][0])  # a classifier's capacity does not depend on output tokens
    assert costs[300][1] > costs[3][1]  # the API's bill does

    # no --output-tokens: the bench generated none, so the API's answers are counted on --api-prompts' labels
    be = ["breakeven", "--api", "gpt-4o-mini", "--bench", str(tmp_path / "b" / "bench_report.json"),
          "--requests-per-month", "1000000", "--host-price-per-hour", "0.36"]  # fmt: skip

    def priced_on_answers(suffix: str) -> tuple[float, float]:
        api = tmp_path / f"api{len(suffix)}.jsonl"
        rows = [chat_record("Classify the query.", f"query {i}", LABELS[i % 3] + suffix) for i in range(6)]
        api.write_text("".join(json.dumps(r) + "\n" for r in rows))
        res = run_cli(*be, "--api-prompts", str(api), "--out", str(tmp_path / f"be-api{len(suffix)}"))
        assert res.returncode == 0, res.stderr[-3000:]
        body = json.loads((tmp_path / f"be-api{len(suffix)}" / "breakeven_report.json").read_text())
        return body["workload"]["output_tokens"], body["api"]["cost"]["monthly_usd"]["value"]

    short, long = priced_on_answers(""), priced_on_answers(" because the customer asks about it at length")
    assert 0 < short[0] < long[0] and short[1] < long[1]
    res = run_cli(*be, "--out", str(tmp_path / "be-none"))
    assert res.returncode != 0 and "is a classifier's bench (no output tokens)" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "be-none").exists()


@pytest.mark.vllm
def test_cli_cascade_escalates_below_the_threshold_on_the_classifier_confidence(
    classifier: Path, vllm_servers, tmp_path: Path
) -> None:
    """`offramp serve --cascade --local-url` in front of the pooling server: it sees a classifier (its /classify
    route), keeps answers whose label probability reaches the threshold and sends the others to the fake API."""
    from fake_openai import FakeOpenAI

    server = vllm_servers(classifier / "merged")
    want, tol = served_reference(classifier, CHAT_QUERIES)
    confidence = [max(p) for p in want]
    lo, hi = min(confidence), max(confidence)
    threshold = (lo + hi) / 2 if hi - lo > 4 * tol else 1.0  # spread out: split them; else everything escalates
    escalates = [c < threshold for c in confidence]
    from offramp.serve.server import free_port

    port = free_port()
    (tmp_path / "labels.json").write_text(json.dumps(LABELS))
    with FakeOpenAI(default="from-the-api") as api:
        cmd = [sys.executable, "-m", "offramp", "serve", server.model_name, "--cascade", "--local-url",
               server.api_base, "--fallback", f"{api.url}#fake-gpt", "--threshold", str(threshold),
               "--labels", str(tmp_path / "labels.json"), "--cascade-port", str(port)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
        try:
            lines: list[str] = []
            while not lines or not lines[-1].startswith("Ctrl-C"):
                line = proc.stdout.readline()
                assert line, proc.stderr.read()[-2000:]
                lines.append(line)
            banner = "".join(lines)
            assert f"cascade endpoint: http://127.0.0.1:{port}/v1  (classifier: " in banner
            assert f"classify: http://127.0.0.1:{port}/classify" in banner
            routes = []
            for query in CHAT_QUERIES:
                body = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}]}
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
                assert r.status_code == 200, r.text
                routes.append(r.headers["x-offramp-route"])
                content = r.json()["choices"][0]["message"]["content"]
                assert (content == "from-the-api") is (routes[-1] == "fallback")
            assert routes == ["fallback" if e else "local" for e in escalates], (routes, confidence, threshold)
            assert api.completions == sum(escalates)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_serve_of_a_classifier_takes_the_chat_face_path(classifier: Path) -> None:
    """`offramp serve CLASSIFIER` without --cascade puts the router in front: its port check speaks of the router."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        res = run_cli("serve", str(classifier / "merged"), "--port", str(taken))
    assert res.returncode != 0 and f"port {taken} on 127.0.0.1 is already in use" in res.stderr
    assert "--cascade-port" in res.stderr and "Traceback" not in res.stderr


def test_lm_eval_refuses_a_classifier_in_one_line(classifier: Path, tmp_path: Path) -> None:
    """Loaded as a causal LM, a classifier gets a random LM head and answers garbage without a word: refused.
    (quantize takes a classifier since #19.2; what it refuses is tested above.)"""
    args = ["eval", "--task", "banking77", "--limit-per-label", "1", "--no-baseline"]
    res = run_cli(*args, "--system", f"cls={classifier / 'merged'}", "--out", str(tmp_path / "out"))
    assert res.returncode != 0, res.stdout[-2000:]
    assert "is a sequence-classification checkpoint (LlamaForSequenceClassification)" in res.stderr, res.stderr
    assert "system 'cls' (lm-eval's causal LM) needs a causal LM" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.vllm
def test_offramp_eval_scores_the_classifier_through_its_chat_face(
    classifier: Path, vllm_servers, tmp_path: Path
) -> None:
    """#19.4: `offramp eval` against the chat face: each query's label is the classifier's argmax and its `prob`
    (what the cascade curve thresholds) is that label's probability, as transformers computes them."""
    from offramp.serve.cascade import CascadeSettings, Router
    from offramp.serve.server import free_port

    server = vllm_servers(classifier / "merged")
    gold = ["cards", "loans", "transfers", "transfers"]
    task = write_task(tmp_path / "task", [chat(q, g) for q, g in zip(CHAT_QUERIES, gold, strict=True)], LABELS)
    want, tol = served_reference(classifier, CHAT_QUERIES)
    cfg = CascadeSettings(server.api_base, server.model_name, None, 0.0, labels=LABELS, local_kind="classify")
    with Router(cfg, port=free_port()) as router:
        spec = f"cls={router.url}/v1+model={server.model_name}+answers=free"
        res = run_cli("eval", "--task", str(task), "--system", spec, "--no-baseline", "--out", str(tmp_path / "e"))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "e" / "eval_report.json").read_text())
    cls = next(s for s in report["systems"] if s["name"] == "cls")
    correct = 0
    for row, ref, g in zip(cls["queries"], want, gold, strict=True):
        best = max(range(len(LABELS)), key=lambda i: ref[i])
        if ref[best] - sorted(ref)[-2] > 2 * tol:
            assert row["free"]["label"] == LABELS[best], (row, ref)
        assert row["free"]["prob"] == pytest.approx(ref[LABELS.index(row["free"]["label"])], abs=tol), (row, ref)
        correct += row["free"]["label"] == g
    assert cls["accuracy"]["value"] == pytest.approx(100 * correct / len(gold), abs=0.01)

"""`offramp eval` end to end: real lm-eval runs (tiny model, SmolLM2, a vLLM server) and the paid-API path
against a real local HTTP server speaking the OpenAI protocol (429 then 200; the reply cache)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import eval_report, eval_system
from fake_openai import FakeOpenAI

from offramp.evals.tasks import load_task


def banking77_subset(path: Path, n_labels: int, per_label: int) -> dict[str, str]:
    """A chat JSONL of the vendored Banking77 test split, first `n_labels` labels; returns {query text: gold}."""
    task = load_task("banking77", per_label=per_label)
    keep = set(task.labels[:n_labels])
    gold = {}
    with open(path, "w", encoding="utf-8") as f:
        for q in task.queries:
            if q.label in keep:
                f.write(json.dumps({"messages": [*q.messages, {"role": "assistant", "content": q.label}]}) + "\n")
                gold[q.messages[-1]["content"]] = q.label
    return gold


def wrong_for(gold: dict[str, str], n: int) -> dict[str, str]:
    """The gold answers, except the first `n` queries (sorted) get another label."""
    labels = sorted(set(gold.values()))
    out = dict(gold)
    for text in sorted(gold)[:n]:
        out[text] = next(label for label in labels if label != gold[text])
    return out


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("task") / "banking77_mini.jsonl"
    return path, banking77_subset(path, n_labels=6, per_label=2)  # 12 queries


def test_tiny_model_and_adapter_vs_paid_api(cli, tiny_model, tiny_lora, mini, tmp_path):
    task, gold = mini
    answers = wrong_for(gold, 2)  # the API gets 10 of 12 right
    cache = tmp_path / "cache"
    with FakeOpenAI(answers, schedule=[429], api_key="sk-test") as api:
        env = {"OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": "sk-test"}
        systems = ["--system", f"cand={tiny_model}", "--system", f"lora={tiny_model}+adapter={tiny_lora}"]
        args = ["eval", "--task", str(task), *systems, "--system", "api=openai:gpt-4o-mini", "--baseline", "api"]
        args += ["--gate", "accuracy>=baseline-2", "--cache", str(cache)]
        res = cli(*args, "--out", str(tmp_path / "run1"), env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        sent = _check_api_requests(api, gold)
        rep = eval_report(tmp_path / "run1")
        assert rep["n_queries"] == 12 and rep["candidate"] == "cand" and rep["baseline"] == "api"
        # the endpoint saw exactly the task's prompts (system + user turn of each record)
        prompts = {json.dumps(q.messages) for q in load_task(str(task)).queries}
        assert {json.dumps(b["messages"]) for b in sent} == prompts
        base = eval_system(rep, "api")
        _check_api_system(base)
        cand, lora = eval_system(rep, "cand"), eval_system(rep, "lora")
        _check_local_systems(cand, lora, sorted(set(gold.values())))
        _check_gate(rep, cand, gold, res.stdout)

        # the same requests again: all answered from the disk cache, nothing spent; the local model asked for its
        # constrained answers only gives the same ones, without the free-generation pass
        api.reset()
        again = ["--system", "api=openai:gpt-4o-mini", "--system", f"cand={tiny_model}+answers=constrained"]
        res = cli("eval", "--task", str(task), *again, "--cache", str(cache), "--out", str(tmp_path / "run2"), env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert api.completions == 0
        _check_cached_rerun(eval_report(tmp_path / "run2"), base, cand)


def _check_api_requests(api: FakeOpenAI, gold: dict) -> list[dict]:
    # /models probe first; then 12 queries x 2 modes answered, one of them after a 429 and a retry. With 8
    # requests in flight the 429 reply can be logged after later 200s, so count rather than index.
    assert api.statuses[0] == 200 and sorted(api.statuses) == [200] * 25 + [429]
    assert api.completions == 25
    sent = [r["body"] for r in api.requests if r["path"] == "/v1/chat/completions"]
    repeats = Counter(json.dumps(b, sort_keys=True) for b in sent)
    assert sorted(repeats.values()) == [1] * 23 + [2]  # the retried request was sent again unchanged
    assert all(r["authorization"] == "Bearer sk-test" for r in api.requests)
    enum = [b for b in sent if "response_format" in b][0]["response_format"]["json_schema"]["schema"]
    assert sorted(enum["properties"]["label"]["enum"]) == sorted(set(gold.values()))
    return sent


def _check_api_system(base: dict) -> None:
    assert base["accuracy"]["value"] == pytest.approx(1000 / 12, abs=0.01)
    assert base["modes"]["free"]["accuracy"]["value"] == pytest.approx(1000 / 12, abs=0.01)
    assert base["modes"]["constrained"]["scorer"] == "openai-json-schema-enum"
    # the fake API reports -0.05 per answer token: the confidence per answer comes through
    q0 = base["queries"][0]["free"]
    assert q0["logprob"] < 0 and q0["prob"] == pytest.approx(math.exp(q0["logprob"]))
    assert base["usage"]["retries"] == 1 and base["usage"]["cache_hits"] == 0 and base["usage"]["requests"] == 24
    from offramp.cost.prices import load_catalogue

    price = load_catalogue().api_price("gpt-4o-mini")
    u = base["usage"]
    want = u["input_tokens"] * price.input_per_1m / 1e6 + u["output_tokens"] * price.output_per_1m / 1e6
    assert base["cost"]["spent_usd"] == pytest.approx(want, rel=1e-3) and want > 0
    assert base["cost"]["source"] == "list_price" and base["cost"]["date"] == price.date


def _check_local_systems(cand: dict, lora: dict, labels: list[str]) -> None:
    for s in (cand, lora):
        assert s["mode"] == "constrained" and s["invalid_rate"] == 0.0
        assert s["scorer"] == "lm-eval-multiple-choice"
        assert s["modes"]["free"]["scorer"] == "free-greedy-exact-match"
        assert s["accuracy"]["ci_low"] <= s["accuracy"]["value"] <= s["accuracy"]["ci_high"]
        for q in s["queries"]:
            c = q["constrained"]
            assert c["label"] in labels and c["logprob"] < 0 and c["margin"] >= 0
            assert c["prob"] == pytest.approx(math.exp(c["logprob"])) and 0 < c["prob_among_labels"] <= 1
    # the adapter is really applied: the label log-probs move
    assert [q["constrained"]["logprob"] for q in cand["queries"]] != [
        q["constrained"]["logprob"] for q in lora["queries"]
    ]
    assert "agreement_with_baseline" in cand and "difference_vs_baseline" in cand


def _check_gate(rep: dict, cand: dict, gold: dict, stdout: str) -> None:
    gate = rep["gate"]
    assert gate["candidate"] == "cand" and gate["baseline"] == "api"
    # the verdict from the known inputs: the candidate's own answers against gold, the API's 10 of 12
    texts = {q["id"]: q["text"] for q in rep["queries"]}
    right = [q["constrained"]["label"] == gold[texts[q["id"]]] for q in cand["queries"]]
    cand_accuracy = 100 * sum(right) / len(right)
    assert cand["accuracy"]["value"] == pytest.approx(cand_accuracy, abs=0.01)
    assert gate["verdict"] == ("GO" if cand_accuracy >= 100 * 10 / 12 - 2 else "NO-GO")
    assert gate["reason"] and gate["verdict"] in stdout


def _check_cached_rerun(rep2: dict, base: dict, cand: dict) -> None:
    again = eval_system(rep2, "api")
    assert again["usage"]["cache_hits"] == 24 and again["cost"]["spent_usd"] == 0
    assert again["accuracy"] == base["accuracy"]
    only = eval_system(rep2, "cand")
    assert list(only["modes"]) == ["constrained"] and all("free" not in q for q in only["queries"])
    for key in ("label", "logprob"):
        got, want = ([q["constrained"][key] for q in s["queries"]] for s in (only, cand))
        assert got == (want if key == "label" else pytest.approx(want, abs=1e-4))


def test_a_model_served_again_under_the_same_name_gets_fresh_answers(cli, mini, tmp_path):
    """A URL endpoint answers with whatever it serves now: retrained and served again as `tuned` on the same port,
    re-evaluating it with the same cache must measure the new model, not return the old answers as cache hits."""
    task, gold = mini
    cache = tmp_path / "cache"
    with FakeOpenAI(wrong_for(gold, 6), model="tuned") as served:
        args = ["eval", "--task", str(task), "--system", f"tuned={served.url}+model=tuned", "--cache", str(cache)]
        res = cli(*args, "--out", str(tmp_path / "before"))
        assert res.returncode == 0, res.stderr[-3000:]
        before = eval_system(eval_report(tmp_path / "before"), "tuned")
        assert before["accuracy"]["value"] == pytest.approx(50.0)
        served.answers, asked = dict(gold), served.completions  # "retrained": now every answer is right
        res = cli(*args, "--out", str(tmp_path / "after"))
        assert res.returncode == 0, res.stderr[-3000:]
        after = eval_system(eval_report(tmp_path / "after"), "tuned")
        assert served.completions == 2 * asked  # every query asked again
    assert after["usage"]["cache_hits"] == 0 and after["accuracy"]["value"] == pytest.approx(100.0)


def test_builtin_banking77_vs_cited_score(cli, tmp_path):
    """`--task banking77`: an API (fake, 70 of 77 right) judged against GPT-4's published score."""
    gold = {q.messages[-1]["content"]: q.label for q in load_task("banking77", per_label=1).queries}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stage.log").write_text("kept\n")  # e.g. the pipeline's log beside the report
    with FakeOpenAI(wrong_for(gold, 7)) as api:
        res = cli(
            "eval",
            "--task",
            "banking77",
            "--limit-per-label",
            "1",
            "--system",
            "api=openai:gpt-4o-mini",
            "--system",
            "gpt4=cited:banking77/gpt-4-1shot",
            "--gate",
            "accuracy>=baseline-2",
            "--no-cache",
            "--out",
            str(tmp_path / "out"),
            env={"OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": "sk-x"},
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert api.completions == 77 * 2
    rep = eval_report(tmp_path / "out")
    assert (tmp_path / "out" / "stage.log").read_text() == "kept\n"
    assert rep["n_queries"] == 77 and len(rep["labels"]) == 77
    cited = eval_system(rep, "gpt4")
    assert cited["source"] == "cited" and cited["accuracy"]["value"] == 80.4 and "Loukas" in cited["reference"]
    assert eval_system(rep, "api")["accuracy"]["value"] == pytest.approx(7000 / 77, abs=0.01)
    assert rep["gate"]["verdict"] == "GO" and "cited score" in rep["gate"]["reason"]


def test_interrupt_leaves_the_cache_valid(tmp_path, mini):
    task, gold = mini
    cache, out = tmp_path / "cache", tmp_path / "out"
    with FakeOpenAI(gold, latency_s=0.3) as api:
        env = {**os.environ, "OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": "sk-x"}
        cmd = [
            sys.executable,
            "-m",
            "offramp",
            "eval",
            "--task",
            str(task),
            "--system",
            "api=openai:gpt-4o-mini",
            "--cache",
            str(cache),
            "--out",
            str(out),
        ]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while len(list(cache.rglob("*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        assert not out.exists()
        files = [p for p in cache.rglob("*") if p.is_file()]
        assert files and all(not p.name.startswith(".") for p in files)  # no temp files left
        for p in files:
            assert "response" in json.loads(p.read_text())
        done = len(files)
        api.latency_s = 0
        api.reset()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert api.completions == 24 - done  # the cached replies were reused
        assert eval_system(eval_report(out), "api")["usage"]["cache_hits"] == done


@pytest.mark.model
def test_smollm2_on_banking77_subset(cli, smollm2, tmp_path):
    """The real SmolLM2: free generation invents label names; constrained to the labels it is far above chance."""
    task = tmp_path / "banking77_8x2.jsonl"
    banking77_subset(task, n_labels=8, per_label=2)
    res = cli("eval", "--task", str(task), "--system", "smol=smollm2-135m-instruct", "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    s = eval_system(eval_report(tmp_path / "out"), "smol")
    free, cons = s["modes"]["free"], s["modes"]["constrained"]
    assert cons["invalid_rate"] == 0.0 and free["invalid_rate"] >= 50.0
    assert cons["accuracy"]["value"] > free["accuracy"]["value"]
    assert cons["accuracy"]["value"] > 2 * 100 / 8  # twice chance
    assert len(s["queries"]) == 16 and all(0 < q["constrained"]["prob_among_labels"] <= 1 for q in s["queries"])


@pytest.mark.vllm
def test_vllm_endpoint_structured_choice(cli, vllm_tiny, mini, tmp_path):
    """A vLLM server as an endpoint system: `structured_outputs: {"choice": labels}` keeps every answer a label,
    even from a model with random weights."""
    task, gold = mini
    res = cli(
        "eval",
        "--task",
        str(task),
        "--system",
        f"served={vllm_tiny.api_base}+model={vllm_tiny.model_name}",
        "--no-cache",
        "--out",
        str(tmp_path / "out"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    s = eval_system(eval_report(tmp_path / "out"), "served")
    labels = set(gold.values())
    assert s["mode"] == "constrained" and s["invalid_rate"] == 0.0 and s["scorer"] == "vllm-structured-choice"
    assert all(q["constrained"]["answer"] in labels for q in s["queries"])
    assert s["modes"]["free"]["invalid_rate"] > 50.0  # random weights do not spell labels unconstrained
    assert s["usage"]["requests"] == 24 and s["usage"]["input_tokens"] > 0
    assert s["cost"]["source"] == "none"


def test_the_scorers_offramp_eval_runs_answer_through_the_one_interface(smollm2, vllm_tiny, mini):
    """lm-eval's multiple_choice and the label-trie search are one argmax (each label + end of turn after the
    chat-templated prompt), so through `ConstrainedScorer` they must pick the same label for every query (SmolLM2:
    a random model picks one label for all); vLLM's structured choice, through the same interface, must answer a
    label for every query."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offramp.evals.metrics import INVALID
    from offramp.evals.scorers import EndpointStructuredChoice, LabelTrieArgmax, LmEvalMultipleChoice
    from offramp.systems import parse_system

    task = load_task(str(mini[0]))
    prompts = [q.messages for q in task.queries]
    lm_eval = LmEvalMultipleChoice(parse_system(f"smollm2={smollm2}")).predict(prompts, task.labels)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    trie = LabelTrieArgmax(model, AutoTokenizer.from_pretrained(smollm2)).predict(prompts, task.labels)
    assert lm_eval == trie and len(set(trie)) > 1

    served = EndpointStructuredChoice(parse_system(f"s={vllm_tiny.api_base}+model={vllm_tiny.model_name}"))
    assert served.name == "vllm-structured-choice"
    preds = served.predict(prompts, task.labels)
    assert len(preds) == len(prompts) and INVALID not in preds

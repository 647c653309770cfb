"""`offramp eval --task-type generation`: free-text answers scored by a chosen metric (chrF, BLEU, ROUGE-L, exact
match), a real lm-eval run on the tiny model, and two endpoints (a fake paid API and a "perfect" server, both real
HTTP servers speaking the OpenAI protocol) whose scores are checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from conftest import eval_report, eval_system
from fake_openai import FakeOpenAI

WORDS = ["apple", "river", "candle", "orange", "silver", "garden", "pencil", "window"]
SYSTEM = "Repeat the word the user gives, in capital letters, and nothing else."


def prompt(word: str) -> str:
    return f"Uppercase this word: {word}"


def write_task(path: Path) -> dict[str, str]:
    """8 records asking to uppercase a word; returns {user message: reference}."""
    refs = {prompt(w): w.upper() for w in WORDS}
    with open(path, "w", encoding="utf-8") as f:
        for user, ref in refs.items():
            msgs = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user},
                {"role": "assistant", "content": ref},
            ]
            f.write(json.dumps({"messages": msgs}) + "\n")
    return refs


@pytest.fixture
def task(tmp_path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "upper.jsonl"
    return path, write_task(path)


def test_tiny_model_vs_api_vs_perfect_endpoint(cli, tiny_model, task, tmp_path):
    path, refs = task
    wrong = {prompt(w) for w in WORDS[:2]}
    # the API is right on 6 of 8; on the other 2 it adds an "S" (APPLES): partial credit under chrF
    api_answers = {user: ref + "S" if user in wrong else ref for user, ref in refs.items()}
    cache = tmp_path / "cache"
    with FakeOpenAI(api_answers, api_key="sk-test") as api, FakeOpenAI(refs) as perfect:
        env = {"OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": "sk-test"}
        common = [
            "eval",
            "--task",
            str(path),
            "--task-type",
            "generation",
            "--max-gen-toks",
            "8",
            "--cache",
            str(cache),
        ]
        systems = ["--system", f"cand={tiny_model}", "--system", f"perfect={perfect.url}"]
        systems += ["--system", "api=openai:gpt-4o-mini"]
        res = cli(*common, "--metric", "chrf", *systems, "--gate", "chrf>=baseline-2", "--out", str(tmp_path / "run1"),
                  env=env)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        # one free request per query and endpoint: no constrained mode, no newline stop, our token budget
        assert api.completions == 8 and perfect.completions == 8
        sent = [r["body"] for r in api.requests if r["path"] == "/v1/chat/completions"]
        assert all("response_format" not in b and "structured_outputs" not in b and "stop" not in b for b in sent)
        assert {b["max_completion_tokens"] for b in sent} == {8}
        assert {b["messages"][-1]["content"] for b in sent} == set(refs)

        rep = eval_report(tmp_path / "run1")
        assert rep["task_type"] == "generation" and rep["metric"] == "chrf" and rep["n_queries"] == 8
        assert rep["labels"] == [] and {q["reference"] for q in rep["queries"]} == set(refs.values())
        base = eval_system(rep, "api")
        # by hand: 6 of 8 exact -> 75.0; chrF is corpus-level, recomputed independently with sacrebleu here
        ordered = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
        want_refs = [m[-1]["content"] for m in ordered]
        want_hyps = [api_answers[m[1]["content"]] for m in ordered]
        chrf = sacrebleu.corpus_chrf(want_hyps, [want_refs]).score
        assert base["exact_match"]["value"] == 75.0 and base["accuracy"]["value"] == 75.0
        assert base["chrf"]["value"] == pytest.approx(chrf, abs=0.01) and 0 < chrf < 100
        assert base["metrics"]["chrf"] == base["chrf"]
        assert base["chrf"]["ci_low"] < base["chrf"]["value"] <= base["chrf"]["ci_high"]
        assert [q["free"]["answer"] for q in base["queries"]] == want_hyps
        assert sum(q["free"]["exact_match"] for q in base["queries"]) == 6
        assert all(q["free"]["score"] < 100 for q in base["queries"][:2]) and base["queries"][2]["free"]["score"] == 100
        assert base["usage"]["requests"] == 8 and base["usage"]["cache_hits"] == 0
        assert base["cost"]["source"] == "list_price" and base["cost"]["spent_usd"] > 0

        best = eval_system(rep, "perfect")
        assert best["chrf"]["value"] == 100.0 and best["exact_match"]["value"] == 100.0 and best["empty_rate"] == 0
        assert best["cost"]["source"] == "none"

        cand = eval_system(rep, "cand")  # random weights: whatever it says, it is not the uppercase word
        assert len(cand["queries"]) == 8 and all(isinstance(q["free"]["answer"], str) for q in cand["queries"])
        assert cand["chrf"]["value"] < base["chrf"]["value"] - 2
        diff = cand["difference_vs_baseline"]
        assert diff["metric"] == "chrf" and diff["value"] == pytest.approx(cand["chrf"]["value"] - chrf, abs=0.02)
        gate = rep["gate"]
        assert (gate["candidate"], gate["baseline"], gate["metric"]) == ("cand", "api", "chrf")
        assert gate["verdict"] == "NO-GO" and "paired difference" in gate["reason"] and "NO-GO" in res.stdout

        # another metric on the same answers: the requests are the same, so all come from the disk cache
        api.reset()
        systems = ["--system", "api=openai:gpt-4o-mini", "--system", f"perfect={perfect.url}"]
        gate_args = ["--gate", "exact_match>=baseline-30"]
        res = cli(*common, "--metric", "exact_match", *systems, *gate_args, "--out", str(tmp_path / "run2"), env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert api.completions == 0
    rep2 = eval_report(tmp_path / "run2")
    again = eval_system(rep2, "api")
    assert again["usage"]["cache_hits"] == 8 and again["cost"]["spent_usd"] == 0
    assert again["exact_match"]["value"] == 75.0 and "chrf" not in again
    assert rep2["gate"]["verdict"] == "GO"  # 75 >= 100 - 30


def test_generation_bad_input(cli, task, tmp_path):
    path, _ = task
    cls = tmp_path / "yesno.jsonl"
    cls.write_text(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": a}]})
            for i, a in enumerate(["yes", "no", "yes", "no"])
        )
        + "\n"
    )
    gen = ["--task", str(path), "--task-type", "generation"]
    cases = [
        ([*gen, "--metric", "meteor", "--system", "a=x"], "unknown metric 'meteor'"),
        (["--task", str(cls), "--metric", "bleu", "--system", "a=x"], "--metric bleu is for generation tasks"),
        (
            [*gen, "--system", "a=x", "--system", "b=cited:banking77/gpt-4-1shot"],
            "a generation task needs measured systems",
        ),
        (["--task", str(path), "--system", "a=x"], "use --task-type generation"),
        ([*gen, "--system", "a=x", "--system", "b=y", "--gate", "accuracy>=baseline"], "use chrf, exact_match"),
        (["--task", str(cls), "--system", "a=x", "--gate", "chrf>=50"], "use accuracy, macro_f1"),
        ([*gen, "--limit-per-label", "2", "--system", "a=x"], "--limit-per-label needs labels"),
        (["--task", "banking77", "--task-type", "generation", "--system", "a=x"], "banking77 is a classification"),
        ([*gen, "--task-type", "summary", "--system", "a=x"], "unknown task type 'summary'"),
    ]
    for args, message in cases:
        res = cli("eval", *args, "--out", str(tmp_path / "out"), timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0, args
        assert lines and lines[-1].startswith("offramp: error: ") and message in lines[-1], (args, res.stderr[-800:])
    assert not (tmp_path / "out").exists()

"""evals/: scoring, bootstrap intervals, the gate, system specs, the API cache and retry policy, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_openai import FakeOpenAI

from offramp.errors import OfframpError
from offramp.evals.api import ApiCache, Ledger, post_with_retries
from offramp.evals.gate import verdict
from offramp.evals.metrics import INVALID, agreement, label_index, macro_f1, paired_difference, parse_answer, score
from offramp.expressions import parse_gate
from offramp.serve.server import free_port
from offramp.systems import CitedSystem, EndpointSystem, LocalSystem, parse_system, parse_systems

LABELS = ["card_arrival", "card_linking", "exchange_rate"]


# ---- constrained scorers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "low", "high"), [(23, 77, 0.2080, 0.4085), (0, 5, 0.0, 0.4345), (5, 5, 0.5655, 1.0)]
)
def test_wilson_interval_is_scipys(k, n, low, high):
    from offramp.stats import wilson_interval

    assert wilson_interval(k, n) == pytest.approx((low, high), abs=5e-5)
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_constrained_accuracy_names_its_scorer_and_counts_no_label_as_wrong():
    from offramp.evals.scorers import ConstrainedScorer, constrained_accuracy

    class Fixed:
        name = "fixed-for-the-test"

        def predict(self, prompts, labels):
            return [0, INVALID, 2, 1][: len(prompts)]

    scorer: ConstrainedScorer = Fixed()
    prompts = [[{"role": "user", "content": str(i)}] for i in range(4)]
    gold = ["card_arrival", "card_linking", "exchange_rate", "card_arrival"]
    got = constrained_accuracy(scorer, prompts, LABELS, gold)
    assert (got["scorer"], got["correct"], got["accuracy"]) == ("fixed-for-the-test", 2, 0.5)
    assert got["ci95_wilson"][0] < 0.5 < got["ci95_wilson"][1]


def test_each_endpoint_provider_names_its_constrained_scorer():
    from offramp.evals.scorers import endpoint_scorer

    assert endpoint_scorer("vllm") == "vllm-structured-choice"
    assert endpoint_scorer("openai") == "openai-json-schema-enum"
    assert endpoint_scorer("anthropic") is None


# ---- answers and metrics -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("card_arrival", 0),
        ("  Card Arrival.\n", 0),
        ('"exchange-rate"', 2),
        ('{"label": "card_linking"}', 1),
        ("card_arrival\nbecause the card…", 0),
        ("card", INVALID),
        ("", INVALID),
        (None, INVALID),
        ("The label is card_arrival", INVALID),  # exact match after normalisation, not substring search
    ],
)
def test_parse_answer(raw, want):
    assert parse_answer(raw, label_index(LABELS)) == want


def test_macro_f1_by_hand():
    gold = np.array([0, 0, 1, 2])
    pred = np.array([0, 1, 1, INVALID])
    # label 0: tp1 fp0 fn1 -> 2/3; label 1: tp1 fp1 fn0 -> 2/3; label 2: tp0 -> 0.  mean = 4/9
    assert macro_f1(gold, pred, 3) == pytest.approx(400 / 9)


def test_bootstrap_interval_brackets_the_point_and_is_seeded():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, 400)
    pred = np.where(rng.random(400) < 0.7, gold, (gold + 1) % 3)
    s = score(gold, pred, 3, seed=0)
    acc = s["accuracy"]
    assert acc["ci_low"] < acc["value"] < acc["ci_high"]
    # binomial standard error at p=0.7, n=400 is 2.3 points: a 95 % interval is ~9 points wide
    assert 6 < acc["ci_high"] - acc["ci_low"] < 12
    assert score(gold, pred, 3, seed=0) == s
    assert score(gold, pred, 3, seed=1)["accuracy"] != acc
    perfect = score(gold, gold, 3)
    assert perfect["accuracy"] == {"value": 100.0, "ci_low": 100.0, "ci_high": 100.0} and perfect["invalid_rate"] == 0


def test_paired_difference_and_agreement():
    gold = np.zeros(100, dtype=int)
    a = np.zeros(100, dtype=int)  # always right
    b = np.where(np.arange(100) < 20, INVALID, 0)  # wrong (invalid) on 20
    d = paired_difference(gold, a, b)
    assert d["value"] == 20.0 and 10 < d["ci_low"] < 20 < d["ci_high"] < 30
    assert agreement(a, b) == 80.0


# ---- gate ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "relative", "offset", "op"),
    [
        ("accuracy>=baseline-2", True, -2.0, ">="),
        (" macro_f1 > baseline + 0.5 ", True, 0.5, ">"),
        ("accuracy>=baseline", True, 0.0, ">="),
        ("accuracy >= 75", False, 75.0, ">="),
    ],
)
def test_parse_gate(expr, relative, offset, op):
    g = parse_gate(expr)
    assert (g.relative, g.offset, g.op) == (relative, offset, op)


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "accuracy",
        "accuracy=>baseline",
        "acc>=baseline",
        "accuracy>=base-2",
        "accuracy>=baseline-",
        "accuracy>=150",
        "accuracy>=baseline*2",
    ],
)
def test_malformed_gate(expr):
    with pytest.raises(OfframpError, match="gate"):
        parse_gate(expr)


def _sys(name, value, low, high):
    return {"name": name, "accuracy": {"value": value, "ci_low": low, "ci_high": high}}


def test_gate_verdicts():
    g = parse_gate("accuracy>=baseline-2")
    go = verdict(
        g, _sys("c", 79.0, 77.0, 81.0), _sys("b", 80.0, 78.0, 82.0), {"value": -1.0, "ci_low": -1.5, "ci_high": -0.5}
    )
    assert go["verdict"] == "GO" and go["conclusive"] and "paired difference" in go["reason"]
    no = verdict(
        g, _sys("c", 70.0, 65.0, 75.0), _sys("b", 80.0, 78.0, 82.0), {"value": -10.0, "ci_low": -15.0, "ci_high": -5.0}
    )
    assert no["verdict"] == "NO-GO" and no["conclusive"] and "fails >= 78.00" in no["reason"]
    shaky = verdict(
        g, _sys("c", 79.0, 70.0, 88.0), _sys("b", 80.0, 78.0, 82.0), {"value": -1.0, "ci_low": -9.0, "ci_high": 7.0}
    )
    assert shaky["verdict"] == "GO" and not shaky["conclusive"] and "inconclusive" in shaky["reason"]
    absolute = verdict(parse_gate("accuracy>60"), _sys("c", 61.0, 55.0, 67.0), None, None)
    assert absolute["verdict"] == "GO" and not absolute["conclusive"]


# ---- system specs --------------------------------------------------------------------------------------------


def test_parse_system_kinds(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    local = parse_system(f"cand=smollm2-135m-instruct+adapter={tmp_path}")
    assert isinstance(local, LocalSystem) and local.model == "smollm2-135m-instruct" and local.adapter == str(tmp_path)
    api = parse_system("base=openai:gpt-4o-mini")
    assert (
        isinstance(api, EndpointSystem)
        and api.base_url == "https://api.openai.com/v1"
        and api.key_env == "OPENAI_API_KEY"
    )
    claude = parse_system("c=anthropic:claude-3-5-haiku-latest")
    assert claude.provider == "anthropic" and claude.key_env == "ANTHROPIC_API_KEY"
    vllm = parse_system("v=http://127.0.0.1:8000/v1+model=tiny+key_env=MY_KEY")
    assert (vllm.provider, vllm.base_url, vllm.model, vllm.key_env) == (
        "vllm",
        "http://127.0.0.1:8000/v1",
        "tiny",
        "MY_KEY",
    )
    assert vllm.answers == "both"
    assert parse_system("v=http://127.0.0.1:8000/v1+answers=constrained").answers == "constrained"
    assert parse_system("m=tiny+answers=free").answers == "free" and parse_system("m=tiny").answers == "both"
    cited = parse_system("gpt4=cited:banking77/gpt-4-1shot")
    assert isinstance(cited, CitedSystem) and cited.key == "banking77/gpt-4-1shot"


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ("nospec", "NAME=SPEC"),
        ("x=mistral:large", "unknown provider"),
        ("x=cited:banking77/gpt-9", "unknown cited score"),
        ("x=http://localhost:8000", "must end in /v1"),
        ("x=smollm2-135m-instruct+adaptor=foo", "bad option"),
        ("x=smollm2-135m-instruct+adapter=/no/such/dir", "not a directory"),
        ("x=openai:", "name the model"),
        ("x=http://localhost:8000/v1+answers=some", "must be both, constrained or free"),
        ("x=tiny+answers=maybe", "must be both, constrained or free"),
    ],
)
def test_bad_system_specs(arg, match):
    with pytest.raises(OfframpError, match=match):
        parse_system(arg)


def test_missing_key_names_the_env_var(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(OfframpError, match="set the env var ANTHROPIC_API_KEY"):
        parse_systems(["c=anthropic:claude-3-5-haiku-latest"])
    with pytest.raises(OfframpError, match="unique"):
        parse_systems(["a=cited:banking77/gpt-4-1shot", "a=cited:banking77/gpt-3.5-1shot"])


# ---- API cache and retries -----------------------------------------------------------------------------------


def test_cache_roundtrip_and_torn_file(tmp_path):
    cache = ApiCache(tmp_path)
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    key = ApiCache.key("http://x/v1/chat/completions", payload)
    assert key != ApiCache.key("http://x/v1/chat/completions", {**payload, "temperature": 0.5})
    assert cache.get(key) is None
    cache.put(key, {"response": {"choices": []}})
    assert cache.get(key) == {"response": {"choices": []}}
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [f"{key}.json"]  # no temp files left over
    cache._path(key).write_text('{"response": {"choi')  # a file torn by something other than us
    assert cache.get(key) is None


def test_retry_policy_against_fake_server():
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    with FakeOpenAI({"q": "a"}, schedule=[429, 503]) as api:
        ledger = Ledger()
        out, _ = post_with_retries(
            f"{api.url}/chat/completions", body, {}, who="t", key_env=None, ledger=ledger, backoff_s=0.01
        )
        assert out["choices"][0]["message"]["content"] == "a"
        assert api.statuses == [429, 503, 200] and ledger.retries == 2
        api.reset()
        api.schedule = [400]  # a client error is not retried
        with pytest.raises(OfframpError, match="HTTP 400"):
            post_with_retries(
                f"{api.url}/chat/completions", body, {}, who="t", key_env=None, ledger=Ledger(), backoff_s=0.01
            )
        assert api.completions == 1
        api.schedule = [500] * 3
        with pytest.raises(OfframpError, match="failed after 3 attempts; last: HTTP 500"):
            post_with_retries(
                f"{api.url}/chat/completions",
                body,
                {},
                who="t",
                key_env=None,
                ledger=Ledger(),
                max_attempts=3,
                backoff_s=0.01,
            )
    with (
        FakeOpenAI({"q": "a"}, api_key="sk-right") as api,
        pytest.raises(OfframpError, match="check the key in OPENAI_API_KEY"),
    ):
        post_with_retries(
            f"{api.url}/chat/completions",
            body,
            {"Authorization": "Bearer sk-wrong"},
            who="t",
            key_env="OPENAI_API_KEY",
            ledger=Ledger(),
        )


# ---- bad input through the CLI: one clear line, exit != 0 ----------------------------------------------------


def _chat(user: str, answer: str | None) -> str:
    msgs = [{"role": "user", "content": user}] + ([{"role": "assistant", "content": answer}] if answer else [])
    return json.dumps({"messages": msgs})


def test_bad_inputs(cli, tmp_path):
    no_labels = tmp_path / "nolabels.jsonl"
    no_labels.write_text(_chat("hello", None) + "\n")
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(_chat(f"q{i}", "yes" if i % 2 else "no") for i in range(4)) + "\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = {"OPENAI_API_KEY": ""}
    cases = [
        (["--task", "banking78", "--system", "a=cited:banking77/gpt-4-1shot"], "unknown task 'banking78'"),
        (["--task", str(no_labels), "--system", "a=x"], "last message must be the assistant"),
        (["--task", "banking77", "--system", "a=openai:gpt-4o-mini"], "set the env var OPENAI_API_KEY"),
        (
            ["--task", "banking77", "--system", "a=x", "--system", "b=cited:banking77/gpt-4-1shot", "--gate", "acc>>1"],
            "malformed gate",
        ),
        (["--task", str(good), "--system", f"a={url}"], f"endpoint {url} is unreachable"),
        (
            ["--task", str(good), "--system", f"a={url}", "--system", "b=cited:banking77/gpt-4-1shot"],
            "is a banking77 score, but the task is 'good'",
        ),
        (["--task", "banking77", "--system", "b=cited:banking77/gpt-4-1shot"], "the candidate must be measured"),
    ]
    for args, message in cases:
        res = cli("eval", *args, "--out", str(tmp_path / "out"), env=env, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode != 0, args
        assert lines and lines[-1].startswith("offramp: error: ") and message in lines[-1], (args, res.stderr[-800:])
    assert not (tmp_path / "out").exists()  # nothing half-written


# ---- generation tasks: metrics, intervals, gate, task loading -----------------------------------------------


def test_generation_metrics_by_hand():
    from offramp.evals.metrics import corpus_score, sentence_scores

    refs = ["APPLE", "the cat sat down", "Hello, world"]
    # exact match ignores case, punctuation and runs of whitespace, nothing else
    assert sentence_scores("exact_match", ["  apple. ", "the  cat sat down", "hello world"], refs) == [100.0] * 3
    assert sentence_scores("exact_match", ["APPLES", "the cat sat", None], refs) == [0.0] * 3
    # ROUGE-L F: "the cat sat" vs "the cat sat down": LCS 3, P 1, R 3/4 -> F = 2 * 0.75 / 1.75
    assert sentence_scores("rougeL", ["x", "the cat sat", "x"], refs)[1] == pytest.approx(100 * 1.5 / 1.75, abs=0.01)
    assert corpus_score("rougeL", refs, refs) == 100.0 and corpus_score("chrf", refs, refs) == 100.0


@pytest.mark.parametrize("metric", ["chrf", "bleu"])
def test_corpus_metric_matches_sacrebleu_and_resamples_from_stats(metric):
    import sacrebleu

    from offramp.evals.metrics import corpus_score, query_stats, resampled_scores

    refs = ["the quick brown fox jumps", "over the lazy dog today", "a b c d e f", "summaries are hard to score"]
    hyps = ["the quick brown fox jumped", "over a lazy dog", "a b c d e f", "scoring summaries is hard"]
    direct = getattr(sacrebleu, f"corpus_{metric}")(hyps, [refs]).score
    assert corpus_score(metric, hyps, refs) == pytest.approx(direct)  # lm-eval's aggregation
    stats = query_stats(metric, hyps, refs)
    identity = np.arange(len(refs))[None, :]
    assert resampled_scores(metric, stats, identity)[0] == pytest.approx(direct)  # summed stats = corpus score
    # a resample repeating query 2 (a perfect answer) four times scores as that corpus does
    again = getattr(sacrebleu, f"corpus_{metric}")([hyps[2]] * 4, [[refs[2]] * 4]).score
    assert resampled_scores(metric, stats, np.full((1, 4), 2))[0] == pytest.approx(again)


def test_sacrebleu_private_stats_api_is_still_there():
    """evals/metrics.py reads chrF's per-segment statistics through sacrebleu's private API (there is no public one):
    if an upgrade renames or reshapes it, this says so by name instead of the intervals going quietly wrong."""
    import inspect

    from sacrebleu.metrics import CHRF

    for name in ("_extract_corpus_statistics", "_compute_score_from_stats"):
        assert callable(getattr(CHRF, name, None)), f"sacrebleu CHRF.{name} is gone: see evals/metrics.py"
    params = list(inspect.signature(CHRF._extract_corpus_statistics).parameters)
    assert params == ["self", "hypotheses", "references"], "sacrebleu changed CHRF's stats API"
    stats = CHRF()._extract_corpus_statistics(["a b c d", "e f"], [["a b c d", "e g"]])
    assert np.asarray(stats).shape == (2, 3 * 6), "sacrebleu CHRF segment stats changed shape"  # 3 per char order


@pytest.mark.parametrize("metric", ["bleu", "chrf"])
def test_summed_segment_stats_give_lm_evals_corpus_score(metric):
    """A bootstrap resample is scored from summed per-segment statistics: summed over every query once, they must
    give the corpus score lm-eval's aggregation computes from the texts."""
    from offramp.evals.metrics import corpus_score, query_stats, resampled_scores

    refs = [f"the card number {i} arrived on day {i % 7} of the week" for i in range(30)]
    hyps = [r if i % 3 else f"my card {i} has not arrived yet" for i, r in enumerate(refs)]
    hyps[4] = ""
    whole = resampled_scores(metric, query_stats(metric, hyps, refs), np.arange(30)[None, :])
    point = corpus_score(metric, hyps, refs)
    assert 10 < point < 95 and whole[0] == pytest.approx(point, abs=1e-6)


def test_generation_intervals_and_paired_difference():
    from offramp.evals.metrics import paired_generation_difference, score_generation, text_agreement

    refs = [f"answer number {i}" for i in range(60)]
    good = list(refs)
    half = [r if i % 2 else "something else" for i, r in enumerate(refs)]
    s = score_generation("exact_match", half, refs, seed=0)
    assert s["exact_match"]["value"] == 50.0 and s["exact_match"]["ci_low"] < 50 < s["exact_match"]["ci_high"]
    c = score_generation("chrf", half, refs, seed=0)["chrf"]
    assert c["ci_low"] < c["value"] < c["ci_high"] < 100
    assert score_generation("chrf", good, refs)["chrf"] == {"value": 100.0, "ci_low": 100.0, "ci_high": 100.0}
    d = paired_generation_difference("exact_match", good, half, refs, seed=0)
    assert d["value"] == 50.0 and 30 < d["ci_low"] < 50 < d["ci_high"] < 70
    assert paired_generation_difference("chrf", good, good, refs)["value"] == 0.0
    assert text_agreement(good, half) == 50.0 and text_agreement(["", "A"], ["", "a "]) == 50.0


def test_generation_gate_metrics():
    from offramp.expressions import check_gate_metric

    g = parse_gate("rougeL >= baseline-1.5")
    assert (g.metric, g.offset) == ("rougeL", -1.5)
    check_gate_metric(parse_gate("chrf>=baseline-2"), "generation", "chrf")
    check_gate_metric(parse_gate("exact_match>50"), "generation", "bleu")
    with pytest.raises(OfframpError, match="not reported for this generation task"):
        check_gate_metric(parse_gate("bleu>10"), "generation", "chrf")
    with pytest.raises(OfframpError, match="not reported for a classification task"):
        check_gate_metric(parse_gate("chrf>10"), "classification", None)
    # the paired difference decides only when it is of the gated metric
    cand = {"name": "c", "chrf": {"value": 79.0, "ci_low": 70.0, "ci_high": 88.0}}
    base = {"name": "b", "chrf": {"value": 80.0, "ci_low": 78.0, "ci_high": 82.0}}
    sure = verdict(
        parse_gate("chrf>=baseline-2"), cand, base, {"value": -1, "ci_low": -1.5, "ci_high": -0.5, "metric": "chrf"}
    )
    assert sure["verdict"] == "GO" and sure["conclusive"] and "paired difference" in sure["reason"]


def test_load_generation_task(tmp_path):
    from offramp.evals.tasks import load_task

    path = tmp_path / "rewrite.jsonl"
    path.write_text("\n".join(_chat(f"rewrite {i}", f"Rewritten text number {i}.") for i in range(10)) + "\n")
    with pytest.raises(OfframpError, match="use --task-type generation"):
        load_task(str(path))
    t = load_task(str(path), kind="generation")
    assert (t.kind, t.metric, t.labels, len(t.queries)) == ("generation", "chrf", [], 10)
    assert t.queries[3].reference == "Rewritten text number 3." and t.gen_toks() == 32
    assert load_task(str(path), kind="generation", metric="bleu", max_gen_toks=64).gen_toks() == 64
    (tmp_path / "labels.json").write_text(json.dumps([f"Rewritten text number {i}." for i in range(10)]))
    assert load_task(str(path)).kind == "classification"  # declared labels: the file is a classification task
    with pytest.raises(OfframpError, match="unknown metric 'rouge'"):
        load_task(str(path), kind="generation", metric="rouge")

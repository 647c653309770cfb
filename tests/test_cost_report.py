"""Prices + bench report + workload + eval gate → report body with provenance, and the go/no-go decision."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from offramp.artifacts import BenchReport, EvalReport
from offramp.cost.prices import load_catalogue
from offramp.cost.report import Inputs, OneOff, Operations, analyse, same_model, sustainable_point
from offramp.cost.workload import Slo, Workload, measure_tokens
from offramp.errors import OfframpError

HW = {"cpu": "AMD EPYC", "cpu_cores": 2, "gpus": []}
# Expectations are computed from the catalogue, never pinned: a user who edits prices.yaml must not break CI.
_CAT = load_catalogue()
HOUR = _CAT.host_price("aws-c7a-large").on_demand_per_hour
_P = _CAT.api_price("gpt-4o")
API_REQ = (256 * _P.input_per_1m + 64 * _P.output_per_1m) / 1e6  # USD per request of 256 in / 64 out
NO_OPS = Operations(hours_per_month=0)  # the arithmetic cases leave out the operations default (tested apart)


def load_point(concurrency: int, rps: float, p99_ttft_ms: float, p99_tpot_ms: float, failed: int = 0) -> dict:
    n = 48
    return {
        "concurrency": concurrency, "completed": n, "failed": failed, "duration_s": n / rps, "requests_per_s": rps,
        "input_tokens": n * 256, "output_tokens": n * 64, "input_tokens_per_s": rps * 256,
        "output_tokens_per_s": rps * 64, "ttft_ms": {"mean": p99_ttft_ms / 2, "p99": p99_ttft_ms},
        "tpot_ms": {"mean": p99_tpot_ms * 0.8, "p99": p99_tpot_ms}, "itl_ms": {"mean": p99_tpot_ms * 0.8},
        "meets_slo": p99_ttft_ms <= 2000 and p99_tpot_ms <= 100 and not failed,
    }  # fmt: skip


def bench(sustainable: bool = True) -> BenchReport:
    points = [load_point(1, 0.8, 400, 20), load_point(4, 2.0, 1500, 60), load_point(8, 2.6, 4000, 140)]
    return BenchReport.model_validate(
        {
            "stage": "bench", "created_at": "2026-11-24T06:00:00+00:00", "hardware": HW,
            "model": "smollm2-135m-instruct", "endpoint": "http://127.0.0.1:8000/v1",
            "slo": {"p99_ttft_s": 2.0, "p99_tpot_ms": 100.0}, "points": points,
            "sustainable": points[1] if sustainable else None,
        }
    )  # fmt: skip


def eval_report(verdict: str) -> EvalReport:
    return EvalReport.model_validate(
        {
            "stage": "eval", "created_at": "2026-11-24T06:00:00+00:00", "hardware": HW, "task": "banking77",
            "n_queries": 300, "systems": [],
            "gate": {"expression": "accuracy>=baseline-2", "verdict": verdict, "reason": f"gate says {verdict}"},
        }
    )  # fmt: skip


def inputs(**kw) -> Inputs:
    cat = load_catalogue()
    base = {
        "api_name": "gpt-4o", "api_price": cat.api_price("gpt-4o"), "host_name": "aws-c7a-large",
        "host": cat.host_price("aws-c7a-large"), "bench": bench(), "bench_path": Path("bench_report.json"),
        "workload": Workload(requests_per_month=1_000_000, input_tokens=256, output_tokens=64, peak_to_average=1.5),
        "operations": NO_OPS,
    }  # fmt: skip
    return Inputs(**{**base, **kw})


def leaves(node, path=""):
    """Every provenance record {value, source, ...} in a report body."""
    if isinstance(node, dict):
        if "value" in node and "source" in node:
            yield path, node
        else:
            for k, v in node.items():
                yield from leaves(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from leaves(v, f"{path}[{i}]")


def test_body_numbers_carry_their_provenance():
    body = analyse(inputs(eval=eval_report("GO")))
    records = dict(leaves(body))
    assert len(records) > 20
    for path, rec in records.items():
        assert rec["source"] in {"list_price", "measured", "computed", "user"}, path
        if rec["source"] == "list_price":
            assert rec["date"] and rec["reference"].startswith("https://") and isinstance(rec["verified"], bool), path
        if rec["source"] == "measured":
            assert rec["hardware"] == HW, path  # the bench's hardware, not this machine's
    assert body["self_hosted"]["load_point"]["requests_per_s"]["value"] == 2.0
    assert body["self_hosted"]["split_rule"].startswith("fitted from the sweep")
    # gpt-4o: 256 × input + 64 × output per 1M, for 1M requests
    assert body["api"]["cost"]["monthly_usd"]["value"] == pytest.approx(API_REQ * 1e6)
    # one c7a.large (2.0 req/s × 0.7 × 2,628,000 / 1.5 = 2.45M req/month ≥ 1M) = 730 h × the hourly price
    assert body["self_hosted"]["cost"]["host_monthly_usd"]["value"] == pytest.approx(730 * HOUR)
    assert body["decision"]["verdict"] == body["summary"]["verdict"] == "GO"
    assert body["summary"]["api_monthly_usd"]["date"] == "2025-06"
    assert body["summary"]["self_hosted_monthly_usd"]["hardware"] == HW


def test_quality_failure_is_no_go_whatever_the_cost():
    body = analyse(inputs(eval=eval_report("NO-GO")))
    assert body["self_hosted"]["cost"]["monthly_usd"]["value"] < body["api"]["cost"]["monthly_usd"]["value"]
    assert body["decision"]["verdict"] == "NO-GO"
    assert "quality gate fails: gate says NO-GO" in body["decision"]["reasons"][0]


def test_without_eval_cost_alone_cannot_say_go():
    body = analyse(inputs())
    assert body["decision"]["verdict"] == "NEEDS-EVAL"
    assert any("quality was not checked" in r for r in body["decision"]["reasons"])


def test_slo_never_met_says_so():
    body = analyse(inputs(bench=bench(sustainable=False), eval=eval_report("GO")))
    assert body["self_hosted"] is None
    assert body["decision"]["verdict"] == body["summary"]["verdict"] == "NO-GO"
    assert any("no load level of the bench met the latency SLO" in r for r in body["decision"]["reasons"])


def test_zero_volume_says_so():
    w = Workload(requests_per_month=0, input_tokens=256, output_tokens=64)
    body = analyse(inputs(workload=w, eval=eval_report("GO")))
    assert body["decision"]["verdict"] == "NO-GO"
    assert any("zero volume" in r for r in body["decision"]["reasons"])
    assert body["break_even"]["volume"] is not None  # where it would pay is still worth knowing


def test_api_cheaper_at_every_volume_is_no_go():
    # gpt-4.1-nano at $0.10 / $0.40: 256 × 0.1 + 64 × 0.4 = 51.2e-6 per request; a full c7a.large carries
    # 3.5M requests/month at peak 1.5 → the API charges $179 for them, the host costs $74.93 → crosses;
    # at peak 20: 262,800 requests → $13.45 < $74.93 → never
    w = Workload(requests_per_month=100_000, input_tokens=256, output_tokens=64, peak_to_average=20)
    cat = load_catalogue()
    body = analyse(inputs(api_name="gpt-4.1-nano", api_price=cat.api_price("gpt-4.1-nano"), workload=w))
    assert body["break_even"]["volume"] is None and body["break_even"]["api_cheaper_always"]
    assert body["decision"]["verdict"] == "NO-GO"


def test_one_offs_are_amortised_and_paid_back():
    one_off = OneOff(finetune_usd=40, eval_usd=60, engineering_hours=10, engineering_rate_usd=100, amortise_months=10)
    assert (one_off.total, one_off.monthly) == (1100, 110)
    body = analyse(inputs(one_off=one_off))
    host = body["self_hosted"]["cost"]
    assert host["monthly_usd"]["value"] == pytest.approx(730 * HOUR + 110)
    # payback: one-offs / (API − host) per month
    assert body["break_even"]["payback_months"] == pytest.approx(1100 / (API_REQ * 1e6 - 730 * HOUR))


def test_sensitivity_tables():
    body = analyse(inputs())
    cuts = body["sensitivity"]["api_price_cuts"]
    assert [c["api_price_cut"] for c in cuts] == [0.0, 0.25, 0.5, 0.75]
    assert cuts[2]["api_monthly_usd"] == pytest.approx(API_REQ * 1e6 / 2)  # half the API's price
    assert cuts[2]["break_even_requests_per_month"] == pytest.approx(2 * cuts[0]["break_even_requests_per_month"])
    util = body["sensitivity"]["utilisation"]  # cost per token ∝ 1 / utilisation
    first, last = util[0], util[-1]
    assert last["self_hosted_per_1m_usd"] == pytest.approx(first["self_hosted_per_1m_usd"] * first["utilisation"])


def test_workload_slo_picks_the_point_that_meets_it():
    w = Workload(requests_per_month=1, input_tokens=256, output_tokens=64)
    assert sustainable_point(bench(), w).concurrency == 4  # the bench's own choice
    strict = w.model_copy(update={"slo": Slo(p99_ttft_s=0.5)})
    assert sustainable_point(bench(), strict).concurrency == 1
    loose = w.model_copy(update={"slo": Slo(p99_ttft_s=5, p99_tpot_ms=200)})
    assert sustainable_point(bench(), loose).concurrency == 8
    impossible = w.model_copy(update={"slo": Slo(p99_ttft_s=0.1)})
    assert sustainable_point(bench(), impossible) is None


def test_same_model_across_store_name_path_and_hub_id():
    assert same_model("smollm2-135m-instruct", "/root/.cache/offramp/models/smollm2-135m-instruct/")
    assert same_model("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct")
    assert not same_model("smollm2-360m-instruct", "smollm2-135m-instruct")


def test_measure_tokens_estimates_without_a_tokenizer(tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(
        '{"messages": [{"role": "system", "content": "aaaa"}, {"role": "user", "content": "bbbbbbbb"},'
        ' {"role": "assistant", "content": "cccc"}]}\n'
        '{"messages": [{"role": "user", "content": "dddddddddddddddd"}, {"role": "assistant", "content": "ee"}]}\n'
    )
    m = measure_tokens(data, None)
    # inputs (4 + 8) / 4 = 3 and 16 / 4 = 4 → 3.5; outputs 4 / 4 = 1 and 2 / 4 = 0.5 → 0.75 → floored at 1
    assert (m["input_tokens"], m["output_tokens"]) == (3.5, 1.0)
    assert m["token_source"].startswith("ESTIMATED as characters/4")
    (tmp_path / "q.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(OfframpError, match="output length is unknown"):
        measure_tokens(tmp_path / "q.jsonl", None)


@pytest.mark.model
@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers (runtime env)")
def test_measure_tokens_with_the_models_tokenizer(tmp_path, smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    msgs = [{"role": "user", "content": "How do I activate my card?"}]
    data = tmp_path / "chat.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "How do I activate my card?"},'
        ' {"role": "assistant", "content": "activate_my_card"}]}\n'
    )
    m = measure_tokens(data, str(smollm2))
    prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert m["input_tokens"] == len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert m["output_tokens"] == len(tok("activate_my_card", add_special_tokens=False)["input_ids"]) + 1
    assert m["token_source"].startswith("measured on 1 records")


def test_api_prompts_are_counted_with_the_base_tokenizer_of_an_adapter(tmp_path, smollm2):
    # the pipeline benches a LoRA adapter; its dir has no tokenizer, so counting fell back to characters / 4
    from transformers import AutoTokenizer

    from offramp.cost.workload import measure_api_prompts

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(smollm2)}))
    system = "Labels: " + ", ".join(f"intent_{i}" for i in range(30))
    rows = [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in ("hi", "card lost")]
    data = tmp_path / "api.jsonl"
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    m = measure_api_prompts(data, str(adapter))
    tok = AutoTokenizer.from_pretrained(smollm2)
    lengths = [len(tok.apply_chat_template(r, add_generation_prompt=True, tokenize=True)["input_ids"]) for r in rows]
    assert m["api_input_tokens"] == sum(lengths) / 2
    assert "ESTIMATED" not in m["api_token_source"] and "tokenizer of" in m["api_token_source"]
    assert 0.5 < m["api_shared_prefix_share"] < 1  # the system prompt, not the differing queries


def test_cascade_is_priced_beside_the_all_local_candidate():
    body = analyse(inputs(escalation_share=0.2))
    c = body["cascade"]
    # local: 1 c7a.large (capacity 2 req/s × 0.7 × 2,628,000 / 1.5 = 2.45M ≥ 1M requests) = 730 h;
    # escalated: 0.2 × 1M requests at the API's price
    assert c["monthly_usd"] == pytest.approx(730 * HOUR + 0.2 * API_REQ * 1e6)
    assert c["per_1k_requests_usd"] == pytest.approx((730 * HOUR + 0.2 * API_REQ * 1e6) / 1000)
    # vs all-API the host must beat the 80 % of API spend it saves
    assert c["break_even_vs_api"]["volume"] == pytest.approx(730 * HOUR / (0.8 * API_REQ))

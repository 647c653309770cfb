"""The reports later stages read (offramp/artifacts.py) validate as their writers really write them, and a key a
reader relies on, renamed, is one OfframpError naming the file and the field, not a KeyError inside `offramp run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cost_report import bench, eval_report, inputs

from offramp.artifacts import BreakevenReport, CascadeReport, DataReport, EmulateReport, load_report
from offramp.errors import OfframpError
from offramp.reports import write_report


def _breakeven(out: Path, **kw) -> Path:
    """`offramp breakeven`'s own writer on the cost tests' bench / eval / workload."""
    from offramp.cost.cli import _write_outputs
    from offramp.cost.report import analyse

    inp = inputs(eval=eval_report("GO"), **kw)
    report, _ = _write_outputs(out, inp, analyse(inp))
    return report


def _eval_with_answers(path: Path) -> Path:
    """An eval report with the candidate's per-answer probabilities (what `offramp cascade` reads) and a cited
    baseline: 40 queries, 4 labels, the candidate right when sure."""
    labels = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    gold = [labels[i % 4] for i in range(40)]
    conf = rng.random(40)
    answers = [g if p > 0.5 else labels[(labels.index(g) + 1) % 4] for g, p in zip(gold, conf, strict=True)]
    tiny = {"name": "tiny", "spec": "tiny", "source": "measured", "mode": "constrained"}
    tiny["accuracy"] = {"value": 60.0, "ci_low": 50.0, "ci_high": 70.0}
    tiny["queries"] = [{"constrained": {"label": a, "prob": float(p)}} for a, p in zip(answers, conf, strict=True)]
    api = {"name": "api", "spec": "cited:x", "source": "cited", "accuracy": {"value": 80, "ci_low": 80, "ci_high": 80}}
    report = {"task": "t", "n_queries": 40, "labels": labels, "queries": [{"gold": g} for g in gold]}
    report |= {"systems": [tiny, api], "gate": {"verdict": "GO"}}
    write_report(path, "eval", report)
    return path


def _cascade(tmp: Path, breakeven: Path) -> Path:
    """`offramp cascade`'s command itself, on a real breakeven report."""
    from offramp.evals.cascade_cli import REPORT, cascade_command

    eval_path = _eval_with_answers(tmp / "eval_report.json")
    cascade_command(eval_path, breakeven, candidate="tiny", baseline="api", max_escalation=0.3, out=tmp / "c")
    return tmp / "c" / REPORT


def _emulate(path: Path) -> Path:
    """The body quantize/emulate.py writes (its writer needs the gptq env and a GPTQ checkpoint)."""
    body = {
        "source": "measured", "emulates": "/ckpt/gptq-w4a16", "emulated_method": "gptq-w4a16",
        "quantization_config": {"quant_method": "gptq", "bits": 4}, "note": "dequantized", "dtype": "float32",
        "library_versions": {"gptqmodel": "5.0"},
        "check": {"heldout": "banking77", "samples": 8, "gptq_perplexity": 12.5, "dense_perplexity": 12.51,
                  "relative_difference": 0.0008, "limit": 0.01},
        "seconds": 3.2,
    }  # fmt: skip
    write_report(path, "emulate", body)
    return path


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """One report of each kind, made the way its writer makes it."""
    from offramp.data import prepare

    d = tmp_path_factory.mktemp("reports")
    be = _breakeven(d / "breakeven", escalation_share=0.25)
    (d / "cascade").mkdir()
    prepare("banking77", d / "data", per_label=1, test_per_label=1)
    return {
        "breakeven": be,
        "cascade": _cascade(d / "cascade", be),
        "data": d / "data" / "data_report.json",
        "emulate": _emulate(d / "emulate_report.json"),
    }


def test_each_report_validates_as_its_writer_writes_it(reports):
    be = load_report(reports["breakeven"], "breakeven")
    assert isinstance(be, BreakevenReport) and be.decision.verdict in {"GO", "NO-GO", "NEEDS-EVAL"}
    assert be.self_hosted is not None and be.self_hosted.cost.per_request_usd.value > 0
    assert be.cascade is not None and be.cascade.escalation_share == 0.25
    dumped = be.model_dump()  # what the pipeline report renders: every key the writer wrote is still there
    assert dumped["decision"]["quality_gate"] and dumped["break_even"]["note"] and dumped["plot"] == "breakeven.png"
    assert dumped["api"]["cost"]["per_request_usd"]["source"] == "computed"
    c = load_report(reports["cascade"], "cascade")
    assert isinstance(c, CascadeReport) and c.estimated and 0 <= c.escalation_share <= 1
    assert c.escalation_share == pytest.approx(1 - c.on_test.local_share) and c.model_dump()["test_index"]
    data = load_report(reports["data"], "data")
    assert isinstance(data, DataReport) and (data.labels, data.train, data.test) == (77, 77, 77)
    em = load_report(reports["emulate"], "emulate")
    assert isinstance(em, EmulateReport) and em.check.samples == 8


def test_breakeven_without_a_sustainable_load_still_validates(tmp_path):
    be = load_report(_breakeven(tmp_path, bench=bench(sustainable=False)), "breakeven")
    assert be.self_hosted is None and be.break_even.volume is None and be.decision.verdict == "NO-GO"


def _rename(data, dotted: str):
    *parents, key = dotted.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    node[f"{key}_renamed"] = node.pop(key)


READ = [
    ("breakeven", "decision.verdict"),  # the pipeline's verdict
    ("breakeven", "decision.reasons"),
    ("breakeven", "summary"),  # the pipeline report's cost table
    ("breakeven", "break_even.volume"),
    ("breakeven", "self_hosted"),  # offramp cascade: $ per request
    ("breakeven", "self_hosted.cost.per_request_usd"),
    ("breakeven", "api.cost.per_request_usd.value"),
    ("breakeven", "api.name"),
    ("breakeven", "api.list_prices.input_per_1m"),
    ("breakeven", "cascade.monthly_usd"),  # the pipeline report's cascade cost
    ("breakeven", "cascade.escalated_api_monthly_usd"),
    ("breakeven", "cascade.break_even_vs_api.volume"),
    ("cascade", "escalation_share"),  # the pipeline's cascade stage prices this share
    ("cascade", "candidate"),
    ("cascade", "baseline"),
    ("cascade", "target"),
    ("cascade", "n_test"),
    ("cascade", "on_test.threshold"),
    ("cascade", "all_local_test.usd_per_1k_queries"),
    ("cascade", "all_api_test.accuracy"),
    ("cascade", "curve_test.0.local_share"),
    ("data", "train"),
    ("data", "labels"),
    ("data", "source"),
    ("emulate", "check.dense_perplexity"),
    ("emulate", "emulates"),
    ("emulate", "seconds"),
]


@pytest.mark.parametrize("kind, field", READ)
def test_a_renamed_key_names_the_file_and_the_field(reports, tmp_path, kind, field):
    data = json.loads(reports[kind].read_text())
    _rename(data, field)
    bad = tmp_path / reports[kind].name
    bad.write_text(json.dumps(data))
    with pytest.raises(OfframpError) as e:
        load_report(bad, kind)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: not a valid {kind} report: {field}: "), msg
    assert len(msg.splitlines()) == 1


def test_a_report_of_another_stage_is_refused(reports):
    with pytest.raises(OfframpError, match=r"not a valid cascade report: stage: Input should be 'cascade'"):
        load_report(reports["breakeven"], "cascade")


def test_a_writer_that_drifts_from_its_schema_writes_nothing(reports, tmp_path):
    """write_report checks a report another stage reads before writing it: the producer fails, not the consumer."""
    from pydantic import ValidationError

    body = json.loads(reports["emulate"].read_text())
    del body["check"]["dense_perplexity"]
    with pytest.raises(ValidationError, match="dense_perplexity"):
        write_report(tmp_path / "emulate_report.json", "emulate", body)
    assert not (tmp_path / "emulate_report.json").exists()


def test_cascade_command_names_a_broken_breakeven_report(reports, tmp_path):
    data = json.loads(reports["breakeven"].read_text())
    _rename(data, "api.cost")
    (tmp_path / "be.json").write_text(json.dumps(data))
    with pytest.raises(OfframpError, match=rf"^{tmp_path / 'be.json'}: not a valid breakeven report: api\.cost: "):
        _cascade(tmp_path, tmp_path / "be.json")
    no_slo = _breakeven(tmp_path / "no-slo", bench=bench(sustainable=False))
    with pytest.raises(OfframpError, match="no self-hosted and API cost per request"):
        _cascade(tmp_path, no_slo)


def _stage_dirs(tmp_path: Path, reports: dict[str, Path]) -> list:
    """The breakeven and cascade stages' work dirs, laid out as `offramp run` leaves them."""
    import shutil

    from offramp.pipeline.runner import StageResult

    be, cascade = tmp_path / "breakeven", tmp_path / "cascade"
    for d in (be, cascade / "cascade", cascade / "breakeven"):
        d.mkdir(parents=True)
    shutil.copy(reports["breakeven"], be / "breakeven_report.json")
    shutil.copy(reports["breakeven"], cascade / "breakeven" / "breakeven_report.json")
    shutil.copy(reports["cascade"], cascade / "cascade" / "cascade_report.json")
    return [StageResult("breakeven", "done", 1.0, be), StageResult("cascade", "done", 1.0, cascade)]


def test_pipeline_report_reads_breakeven_and_cascade_through_their_schemas(reports, tmp_path):
    from offramp.pipeline import report
    from offramp.pipeline.config import PipelineConfig

    rep = report.collect(PipelineConfig().model_dump(), _stage_dirs(tmp_path, reports))
    written = json.loads(reports["breakeven"].read_text())
    assert rep["problems"] == [] and rep["verdict"]["verdict"] == written["decision"]["verdict"]
    assert rep["breakeven"]["summary"] == written["summary"]
    assert rep["cascade_cost"]["monthly_usd"] == written["cascade"]["monthly_usd"]
    assert rep["cascade"]["escalation_share"] == json.loads(reports["cascade"].read_text())["escalation_share"]


def test_pipeline_report_names_an_invalid_breakeven_report(reports, tmp_path):
    from offramp.pipeline import report
    from offramp.pipeline.config import PipelineConfig

    results = _stage_dirs(tmp_path, reports)
    path = tmp_path / "breakeven" / "breakeven_report.json"
    data = json.loads(path.read_text())
    _rename(data, "decision.verdict")
    path.write_text(json.dumps(data))
    rep = report.collect(PipelineConfig().model_dump(), results)
    assert rep["breakeven"] is None and rep["verdict"]["verdict"] == "INCOMPLETE"
    assert rep["problems"] == [f"{path}: not a valid breakeven report: decision.verdict: Field required"]
    assert str(path) in rep["verdict"]["reason"] and "decision.verdict" in rep["verdict"]["reason"]


def test_the_verdict_names_whose_quality_and_whose_price_it_compares():
    # #18.2: a cited GPT-4 score was printed as "gpt-4o-mini 80.40", beside gpt-4o-mini's price
    from offramp.cost.prices import load_catalogue
    from offramp.cost.report import analyse
    from offramp.evals.report import cited_result
    from offramp.evals.tasks import load_task
    from offramp.pipeline.report import baseline_sources
    from offramp.systems import CitedSystem

    task = load_task("banking77", per_label=1)
    cited = cited_result(CitedSystem("gpt-4-1shot-cited", "cited:banking77/gpt-4-1shot", "banking77/gpt-4-1shot"), task)
    ev = {"n_queries": 77, "systems": [cited], "gate": {"baseline": "gpt-4-1shot-cited"}}
    be = analyse(inputs(api_name="gpt-4o-mini", api_price=load_catalogue().api_price("gpt-4o-mini")))
    text = baseline_sources(ev, be)
    assert "GPT-4 (1-shot) 80.4 % is cited" in text and "Loukas" in text and "not measured here" in text
    assert "API price: gpt-4o-mini list price" in text and "256-token prompt" in text
    assert "different models" in text
    assert "$620 for 3,080 queries" in text and "Table 5" in text
    measured = {**cited, "source": "measured", "spec": "openai:gpt-4o-mini", "name": "gpt-4o-mini"}
    same = baseline_sources({**ev, "systems": [measured], "gate": {"baseline": "gpt-4o-mini"}}, be)
    assert "measured here on 77 queries" in same and "different models" not in same

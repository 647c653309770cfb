import json

import pytest

from offramp.errors import OfframpError
from offramp.pipeline.config import PipelineConfig, default_config_path, load_config
from offramp.pipeline.runner import DONE, Runner, Stage, StageFailed
from offramp.pipeline.stages import baseline_spec, build_stages


def test_embedded_default_config_is_valid():
    cfg = load_config(None)
    assert default_config_path().name == "pipeline-cpu.yaml"
    assert cfg.model == "smollm2-135m-instruct" and cfg.task.source == "banking77"
    names = [s.name for s in build_stages(cfg)]
    assert names[:2] == ["pull", "data"] and names[-4:] == ["eval", "bench", "breakeven", "cascade"]
    assert cfg.quantize.methods == ["w8a8-int8-rtn"] and names[2:5] == ["finetune", "quantize", "eval"]


def test_gpu_example_config_is_valid():
    cfg = load_config(default_config_path().with_name("pipeline-gpu.yaml"))
    assert cfg.task.train_per_label is None and cfg.finetune.recipe == "full"


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("task:\n  per_label: 3\n", "task.per_label: Extra inputs are not permitted"),
        ("serve:\n  num_prompts: 0\n", "serve.num_prompts: Input should be greater than or equal to 1"),
        ("quantize:\n  methods: [int3]\n", "quantize.methods.0: Input should be"),
        ("- a list\n", "expected a mapping"),
        ("cascade:\n  target: accuracy>>1\n", "cascade.target: Value error, malformed target"),
        ("cascade:\n  max_escalation: 1.5\n", "cascade.max_escalation: Input should be less than or equal to 1"),
        ("model: [unclosed\n", "not valid YAML"),
        ("name: ../../x\n", "name: Value error, must be one path component"),
        ("gate: accuracy>>80\n", "gate: Value error, malformed gate"),
        ("gate: accuracy>=0.8\n", "looks like a fraction; did you mean accuracy>=80?"),
        ("name: a/b\n", "name: Value error, must be one path component"),
    ],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, message):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(OfframpError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(f)


def test_baseline_falls_back_to_cited_score_under_its_own_name_without_a_key(monkeypatch):
    # a cited GPT-4 score shown under the configured API's name ("gpt-4o-mini 80.40") was a defect (#18.2)
    args = ("gpt-4o-mini", "openai:gpt-4o-mini", "cited:banking77/gpt-4-1shot")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert baseline_spec(*args) == ("gpt-4-1shot-cited", "cited:banking77/gpt-4-1shot")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert baseline_spec(*args) == ("gpt-4o-mini", "openai:gpt-4o-mini")


def _counting_stages(calls: list[str], rank: int = 8, fail: str | None = None) -> list[Stage]:
    def make(name: str):
        def run(w, up):
            calls.append(name)
            if name == fail:
                (w / "half-written").write_text("x")
                raise StageFailed("disk full")
            (w / "out.json").write_text(json.dumps({"upstream": sorted(up)}))

        return run

    return [
        Stage("pull", {"model": "m"}, make("pull")),
        Stage("data", {"per_label": 2}, make("data")),
        Stage("finetune", {"rank": rank}, make("finetune"), ["pull", "data"]),
        Stage("eval", {}, make("eval"), ["finetune"]),
    ]


def test_runner_caches_by_input_hash_and_reruns_only_what_changed(tmp_path):
    calls: list[str] = []
    Runner(tmp_path).execute(_counting_stages(calls))
    assert calls == ["pull", "data", "finetune", "eval"]
    calls.clear()
    results = Runner(tmp_path).execute(_counting_stages(calls))
    assert calls == [] and {r.status for r in results} == {"cached"}
    Runner(tmp_path).execute(_counting_stages(calls, rank=16))
    assert calls == ["finetune", "eval"]  # changing the LoRA rank reruns finetune and what follows only


def test_failed_stage_leaves_no_cache_entry_and_resumes(tmp_path):
    calls: list[str] = []
    results = Runner(tmp_path).execute(_counting_stages(calls, fail="finetune"))
    assert [r.status for r in results] == ["done", "done", "failed"]
    failed_dir = results[2].workdir
    assert not (failed_dir / DONE).exists()
    calls.clear()
    results = Runner(tmp_path).execute(_counting_stages(calls))
    assert calls == ["finetune", "eval"]
    assert not (results[2].workdir / "half-written").exists()


def test_any_exception_in_a_stage_is_reported_and_later_stages_still_run(tmp_path):
    def broken(w, up):
        raise KeyError("escalation_share")  # e.g. a report missing a key

    def fine(w, up):
        (w / "out.json").write_text("{}")

    stages = [Stage("cascade", {}, broken, optional=True), Stage("after", {}, fine)]
    results = Runner(tmp_path).execute(stages)
    assert [r.status for r in results] == ["failed", "done"]
    assert results[0].error == "KeyError: 'escalation_share'"


def test_an_invalid_stage_report_is_named_not_dropped(tmp_path):
    from offramp.pipeline import report
    from offramp.pipeline.runner import StageResult

    (tmp_path / "eval_report.json").write_text(json.dumps({"stage": "eval", "systems": "not a list"}))
    rep = report.collect(PipelineConfig().model_dump(), [StageResult("eval", "done", 1.0, tmp_path)])
    assert rep["verdict"]["verdict"] == "INCOMPLETE"
    assert (
        str(tmp_path / "eval_report.json") in rep["verdict"]["reason"]
        and "not a valid eval report" in rep["verdict"]["reason"]
    )


def test_report_renders_with_partial_results(tmp_path):
    from offramp.pipeline import report
    from offramp.pipeline.runner import StageResult

    cfg = PipelineConfig().model_dump()
    results = [StageResult("pull", "done", 1.0, tmp_path), StageResult("finetune", "failed", 2.0, None, "boom")]
    rep = report.collect(cfg, results)
    assert rep["verdict"]["verdict"] == "INCOMPLETE" and "finetune" in rep["verdict"]["reason"]
    out = report.write(tmp_path, rep)
    text = out.read_text()
    assert "INCOMPLETE" in text and "boom" in text
    assert json.loads((tmp_path / "report.json").read_text())["stages"][1]["status"] == "failed"


def _stages(**quantize) -> dict:
    cfg = PipelineConfig.model_validate({"quantize": quantize})
    return {s.name: s for s in build_stages(cfg)}


def test_quantize_stage_only_when_methods_are_set():
    without = _stages(methods=[])
    assert "quantize" not in without and list(without)[:4] == ["pull", "data", "finetune", "eval"]
    assert "merge" not in without["finetune"].config and "quantize" not in without["eval"].needs
    with_q = _stages(methods=["w8a8-int8-rtn"])
    assert list(with_q)[:5] == ["pull", "data", "finetune", "quantize", "eval"]
    # the tuned model is merged so it can be quantized, and eval waits for the quantized checkpoints
    assert with_q["finetune"].config["merge"] is True and with_q["quantize"].needs == ["pull", "data", "finetune"]
    assert "quantize" in with_q["eval"].needs and with_q["quantize"].optional
    assert with_q["finetune"].config != without["finetune"].config  # a different finetune output -> new cache key


def test_eval_inputs_change_with_the_quantize_config():
    from offramp.pipeline.runner import stage_key

    def eval_key(**quantize) -> str:
        keys: dict[str, str] = {}
        for st in _stages(**quantize).values():  # chained as the runner does: a key covers its upstream keys
            keys[st.name] = stage_key(st, {n: keys[n] for n in st.needs})
        return keys["eval"]

    rtn = eval_key(methods=["w8a8-int8-rtn"])
    assert rtn == eval_key(methods=["w8a8-int8-rtn"])
    others = [eval_key(methods=[]), eval_key(methods=["w8a8-int8"]), eval_key(methods=["w8a8-int8-rtn"], n_heldout=8)]
    assert len({rtn, *others}) == 4


def test_config_accepts_the_rtn_method_and_rejects_unknown(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("quantize:\n  methods: [w8a8-int8-rtn, gptq-w4a16]\n  n_heldout: 16\n")
    assert load_config(f).quantize.methods == ["w8a8-int8-rtn", "gptq-w4a16"]
    f.write_text("quantize:\n  methods: [w8a8-int8-fast]\n")
    with pytest.raises(OfframpError, match=r"quantize\.methods\.0: Input should be"):
        load_config(f)


def _quantize_outcome(root, method: str, servable: bool) -> dict:
    ckpt = root / method
    ckpt.mkdir(parents=True)
    note = "vLLM-CPU serves GPTQ on AVX-512 CPUs"
    (ckpt / "quantize_report.json").write_text(
        json.dumps({"servable_by_vllm_cpu_here": servable, "vllm_cpu_note": note, "size_ratio": 0.709,
                    "linear_compression": 1.6, "perplexity_change_pct": 4.8, "hardware": {"cpu": "AMD EPYC"}})
    )  # fmt: skip
    return {"method": method, "status": "done", "checkpoint": str(ckpt)}


def _quantize_stage_dir(tmp_path, monkeypatch):
    from offramp.pipeline import stages

    monkeypatch.setattr(stages, "has_cuda", lambda: False)
    q = tmp_path / "quantize"
    outcomes = [
        _quantize_outcome(q, "w8a8-int8-rtn", True),
        _quantize_outcome(q, "gptq-w4a16", False),
        {"method": "bnb-nf4", "status": "not-supported", "note": "offramp quantize exited 2: needs a CUDA GPU"},
    ]
    (q / stages.QUANTIZED).write_text(json.dumps({"source": "merged", "methods": outcomes}))
    return q


def test_unservable_quantized_checkpoint_is_skipped_with_a_note(tmp_path, monkeypatch):
    from offramp.pipeline.stages import quantized_systems

    systems = {s["system"]: s for s in quantized_systems(_quantize_stage_dir(tmp_path, monkeypatch), "tuned")}
    assert systems["tuned-w8a8-int8-rtn"]["evaluated"] and not systems["tuned-w8a8-int8-rtn"].get("note")
    assert not systems["tuned-gptq-w4a16"]["evaluated"] and "AVX-512" in systems["tuned-gptq-w4a16"]["note"]
    assert not systems["tuned-bnb-nf4"]["evaluated"] and "CUDA" in systems["tuned-bnb-nf4"]["note"]
    assert quantized_systems(None, "tuned") == []


def test_report_shows_quantized_size_and_perplexity_next_to_accuracy(tmp_path, monkeypatch):
    from offramp.pipeline import report
    from offramp.pipeline.runner import StageResult

    q = _quantize_stage_dir(tmp_path, monkeypatch)
    results = [StageResult("finetune", "done", 1.0, tmp_path / "ft"), StageResult("quantize", "done", 5.0, q)]
    rep = report.collect(PipelineConfig().model_dump(), results)
    rows = {r["system"]: r for r in rep["quantized"]}
    assert rows["tuned-w8a8-int8-rtn"]["quantize"]["perplexity_change_pct"] == 4.8
    assert "AVX-512" in rows["tuned-gptq-w4a16"]["note"] and rows["tuned-bnb-nf4"]["status"] == "not-supported"
    text = report.write(tmp_path, rep).read_text()
    assert "Quantized candidates" in text and "+4.8 %" in text and "0.709x" in text and "AVX-512" in text


def test_eval_settings_reach_the_eval_command_and_its_cache_key():
    from offramp.pipeline.runner import stage_key

    def eval_stage(**ev):
        stages = {s.name: s for s in build_stages(PipelineConfig.model_validate({"eval": ev}))}
        keys: dict[str, str] = {}
        for st in stages.values():
            keys[st.name] = stage_key(st, {n: keys[n] for n in st.needs})
        return stages["eval"], keys["eval"]

    default, key = eval_stage()
    assert default.config["eval"] == {"concurrency": 16, "base_answers": "constrained"}
    assert len({key, eval_stage(concurrency=4)[1], eval_stage(base_answers="both")[1]}) == 3


def _keys(cfg: PipelineConfig) -> dict[str, str]:
    from offramp.pipeline.runner import stage_key

    keys: dict[str, str] = {}
    for st in build_stages(cfg):  # chained as the runner does: a key covers its upstream keys
        keys[st.name] = stage_key(st, {n: keys[n] for n in st.needs})
    return keys


ALL = {"pull", "data", "finetune", "quantize", "eval", "bench", "breakeven", "cascade"}
AFTER_FINETUNE = {"finetune", "quantize", "eval", "bench", "breakeven", "cascade"}
AFTER_EVAL = {"eval", "bench", "breakeven", "cascade"}


# Each config field, a changed value, and the stages that must run again: those whose command the field reaches,
# and everything after them. Written from what each `offramp <stage>` command takes, not from build_stages.
RERUNS = [
    ("model", "HuggingFaceTB/SmolLM2-360M-Instruct", ALL - {"data"}),  # `data prepare` takes no model
    ("task.source", "snips", ALL - {"pull"}),
    ("task.train_per_label", 10, ALL - {"pull"}),
    ("task.seed", 1, ALL - {"pull"}),
    ("finetune.recipe", "full", AFTER_FINETUNE),
    ("finetune.args", ["--rank", "32"], AFTER_FINETUNE),
    ("quantize.n_heldout", 8, {"quantize", *AFTER_EVAL}),
    ("quantize.args", ["--n-calib", "16"], {"quantize", *AFTER_EVAL}),
    ("gate", "accuracy>=baseline-1", AFTER_EVAL),
    ("eval.concurrency", 4, AFTER_EVAL),
    ("serve.num_prompts", 8, AFTER_EVAL),  # the eval stage benchmarks its own server
    ("serve.args", ["--max-model-len", "1024"], AFTER_EVAL),
    # the fine-tune report carries its run cost at the host's price; eval and bench price the throughput
    ("cost.host", "aws-c7i-2xlarge", AFTER_FINETUNE),
    ("cost.host_price_per_hour", 0.5, AFTER_FINETUNE),
    ("cost.requests_per_month", 5_000_000, {"breakeven", "cascade"}),
    ("cost.peak_to_average", 2.0, {"breakeven", "cascade"}),
    ("cost.api_model", "gpt-4.1-mini", {"breakeven", "cascade"}),
    ("cost.args", ["--eng-hours", "40"], {"breakeven", "cascade"}),
    ("cascade.max_escalation", 0.2, {"cascade"}),
    ("name", "other", set()),
]


@pytest.mark.parametrize(("field", "value", "expected"), RERUNS, ids=[r[0] for r in RERUNS])
def test_changing_a_config_field_reruns_exactly_the_stages_that_read_it(field, value, expected, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base = {"quantize": {"methods": ["w8a8-int8-rtn"]}}
    changed = json.loads(json.dumps(base))
    *parents, leaf = field.split(".")
    node = changed
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    before, after = _keys(PipelineConfig.model_validate(base)), _keys(PipelineConfig.model_validate(changed))
    assert set(before) == ALL
    assert {name for name in before if before[name] != after.get(name)} == expected


def test_a_baseline_falls_back_only_without_its_key_and_the_eval_key_follows(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cited = _keys(PipelineConfig())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    live = _keys(PipelineConfig())
    assert {name for name in cited if cited[name] != live[name]} == {"eval", "bench", "breakeven", "cascade"}


def test_a_file_edited_in_place_reruns_what_reads_it(tmp_path):
    csv = tmp_path / "tickets.csv"
    csv.write_text("text,label\nhello,greet\nbye,leave\n")
    cfg = PipelineConfig.model_validate({"task": {"source": str(csv)}})
    before = _keys(cfg)
    csv.write_text("text,label\nhello,greet\nbye,farewell\n")
    after = _keys(cfg)
    assert before["pull"] == after["pull"] and before["data"] != after["data"]


def test_a_stage_cannot_read_a_field_it_does_not_declare():
    from offramp.pipeline.inputs import ConfigView, UndeclaredInput

    view = ConfigView(PipelineConfig(), ["task", "cost.host"])
    assert view.task.source == "banking77" and view.cost.host == "aws-c7i-xlarge"
    for read in (lambda: view.cost.requests_per_month, lambda: view.model, lambda: view.finetune.recipe):
        with pytest.raises(UndeclaredInput, match="does not declare"):
            read()
    assert set(view.values()) == {"task", "cost.host"}


@pytest.mark.vllm
@pytest.mark.slow
def test_offramp_run_end_to_end_on_the_tiny_model(cli, tiny_model, tmp_path, monkeypatch):
    """Every stage of `offramp run` for real (fine-tune, quantize, vLLM eval + bench, break-even, cascade) on the
    tiny random Llama; a re-run is all cache hits, and a cost field re-runs only the stages that read it."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = {
        "name": "tiny-e2e",
        "model": str(tiny_model),
        "task": {"source": "banking77", "train_per_label": 2, "test_per_label": 2},  # the cascade needs 2
        "finetune": {"args": ["--max-steps", "8", "--batch-size", "4", "--grad-accum", "1"]},
        "quantize": {"methods": ["w8a8-int8-rtn"], "n_heldout": 4},
        "serve": {"concurrency": [1], "num_prompts": 4, "args": ["--max-model-len", "1024"]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML

    def run() -> dict:
        res = cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), timeout=1800)
        assert res.returncode == 0, res.stderr[-4000:]
        report = json.loads((tmp_path / "runs" / "tiny-e2e" / "report.json").read_text())
        return {s["name"]: s["status"] for s in report["stages"]} | {"_report": report}

    first = run()
    report = first.pop("_report")
    assert first == dict.fromkeys(["pull", "data", "finetune", "quantize", "eval", "bench", "breakeven", "cascade"],
                                  "done")  # fmt: skip
    assert report["eval"]["n_queries"] == 154 and report["verdict"]["verdict"] in ("GO", "NO-GO")
    systems = {s["name"] for s in report["eval"]["systems"]}
    # no OPENAI_API_KEY here: the cited GPT-4 score stands in under its own name, and the verdict says so (#18.2)
    assert {"base", "tuned", "tuned-w8a8-int8-rtn", "gpt-4-1shot-cited"} <= systems
    reason = report["verdict"]["reason"]
    assert "GPT-4 (1-shot) 80.4 % is cited" in reason and "quality and price are of different models" in reason
    assert report["bench"] and report["breakeven"] and report["cascade"]

    again = run()
    again.pop("_report")
    assert set(again.values()) == {"cached"}

    path.write_text(json.dumps({**config, "cost": {"requests_per_month": 3_000_000}}))
    changed = run()
    changed.pop("_report")
    assert {name for name, status in changed.items() if status == "done"} == {"breakeven", "cascade"}
    assert {name for name, status in changed.items() if status != "done"} == set(ALL) - {"breakeven", "cascade"}

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
    ],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, message):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(OfframpError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(f)


def test_baseline_falls_back_to_cited_score_without_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert baseline_spec("openai:gpt-4o-mini", "cited:banking77/gpt-4-1shot") == "cited:banking77/gpt-4-1shot"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert baseline_spec("openai:gpt-4o-mini", "cited:banking77/gpt-4-1shot") == "openai:gpt-4o-mini"


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

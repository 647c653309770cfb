"""Captured traffic end to end (#16): an OpenAI Batch API input + output pair → `offramp traffic import` →
`traffic report` → `data from-traffic` → `offramp run` with `task.source: traffic:STORE?tag=…` on the tiny model."""

from __future__ import annotations

import json

import pytest
from conftest import run_pipeline
from conftest_traffic import batch_pair

INTENTS = (("forecast", "weather"), ("play", "music"), ("wake me at", "alarm"))
TAG = "assistant/intent"


@pytest.mark.vllm
@pytest.mark.slow
def test_imported_batch_traffic_runs_the_whole_pipeline(cli, tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the teacher's recorded answers are the baseline
    queries = [(f"{verb} number {i}", label) for i in range(20) for verb, label in INTENTS]  # 60 calls, 3 labels
    inp, out, _ = batch_pair(tmp_path, queries, step_s=60)
    store = str(tmp_path / "traffic.db")
    r = cli("traffic", "import", str(inp), str(out), "--store", store, "--tag", TAG)
    assert r.returncode == 0 and "added 60" in r.stdout, r.stderr
    r = cli("traffic", "report", "--store", store, "--out", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    group = json.loads((tmp_path / "report" / "report.json").read_text())["groups"][0]
    assert group["tag"] == TAG and group["answers"]["kind"] == "classification"
    r = cli("data", "from-traffic", "--store", store, "--tag", TAG, "--out", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "data" / "labels.json").read_text()) == ["alarm", "music", "weather"]

    config = {
        "name": "traffic-e2e",
        "model": str(tiny_model),
        "task": {"source": f"traffic:{store}?tag={TAG}"},
        "finetune": {"args": ["--max-steps", "4", "--batch-size", "4", "--grad-accum", "1"]},
        "classifier": {"enabled": False},  # the classifier candidate's run is test_pipeline's tiny e2e; CI time
        "serve": {"concurrency": [1], "num_prompts": 4, "args": ["--max-model-len", "1024"]},
    }
    report, status = run_pipeline(cli, config, tmp_path)
    done = {n for n, (s, _) in status.items() if s == "done"}
    assert done == {"pull", "data", "finetune", "eval", "bench", "breakeven"}, status
    assert status["cascade"][0] == "skipped" and "captured traffic" in status["cascade"][1]
    assert report["eval"]["task"] == "assistant-intent" and report["eval"]["n_queries"] == 12
    assert report["eval"]["gate"]["expression"] == "accuracy>=95"  # accuracy>=baseline-5 against the teacher's 100
    assert report["data"]["teacher"] == ["gpt-4o-mini-2024-07-18"]
    reason = report["verdict"]["reason"]
    assert report["verdict"]["verdict"] in ("GO", "NO-GO"), report["verdict"]
    assert "captured traffic" in reason and "the teacher gpt-4o-mini-2024-07-18" in reason
    assert "Data: captured traffic" in (tmp_path / "runs" / "traffic-e2e" / "report.html").read_text()

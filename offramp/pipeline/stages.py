"""The default pipeline's stages, each a thin wrapper over one `offramp <stage>` command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from offramp.pipeline.config import PipelineConfig
from offramp.pipeline.runner import Stage, StageFailed, offramp_cmd, stop_process_group
from offramp.placeholder import UNBUILT
from offramp.store import KNOWN

# Keys the pipeline understands for API baselines; a missing key switches to the baseline's fallback.
API_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def baseline_spec(spec: str, fallback: str | None) -> str:
    provider = spec.split(":", 1)[0]
    if provider in API_KEY_ENV and not os.environ.get(API_KEY_ENV[provider]) and fallback:
        return fallback
    return spec


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    log = lambda w: w / "stage.log"  # noqa: E731
    model = cfg.model

    def pull(w: Path, up: dict[str, Path]) -> None:
        if model in KNOWN:
            offramp_cmd("models", "pull", model, log=log(w))

    def data(w: Path, up: dict[str, Path]) -> None:
        t = cfg.task
        args = [
            "data",
            "prepare",
            t.source,
            "--out",
            str(w / "data"),
            "--seed",
            str(t.seed),
            "--prompt-style",
            t.prompt_style,
        ]
        if t.train_per_label:
            args += ["--per-label", str(t.train_per_label)]
        if t.test_per_label:
            args += ["--test-per-label", str(t.test_per_label)]
        offramp_cmd(*args, log=log(w))

    def finetune(w: Path, up: dict[str, Path]) -> None:
        f = cfg.finetune
        offramp_cmd(
            "finetune",
            model,
            "--data",
            str(up["data"] / "data/train.jsonl"),
            "--recipe",
            f.recipe,
            "--out",
            str(w / "adapter"),
            *_host_args(cfg),
            *f.args,
            log=log(w),
        )

    def evaluate(w: Path, up: dict[str, Path]) -> None:
        systems = ["--system", f"base={model}"]
        if "finetune" in up:
            systems += ["--system", f"tuned={model}+adapter={up['finetune'] / 'adapter'}"]
        for b in cfg.baselines:
            systems += ["--system", f"{b.name}={baseline_spec(b.spec, b.fallback)}"]
        offramp_cmd(
            "eval",
            "--task",
            str(up["data"] / "data/test.jsonl"),
            *systems,
            "--gate",
            cfg.gate,
            "--out",
            str(w),
            log=log(w),
        )

    def serve_bench(w: Path, up: dict[str, Path]) -> None:
        s = cfg.serve
        port = _free_port()
        served = [model]
        if "finetune" in up:
            served += ["--adapter", f"tuned={up['finetune'] / 'adapter'}"]
        with open(log(w), "a") as server_log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "offramp", "serve", *served, "--port", str(port), *s.args],
                stdout=server_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_healthy(proc, port, log(w))
            args = [
                "bench",
                f"http://127.0.0.1:{port}/v1",
                "--workload",
                str(up["data"] / "data/test.jsonl"),
                "--concurrency",
                ",".join(map(str, s.concurrency)),
                "--num-prompts",
                str(s.num_prompts),
                "--slo-p99-ttft-s",
                str(s.slo_p99_ttft_s),
                "--slo-p99-tpot-ms",
                str(s.slo_p99_tpot_ms),
                "--out",
                str(w),
                *_host_args(cfg),
            ]
            if "finetune" in up:
                args += ["--model-name", "tuned"]
            if s.structured_choice:
                args += ["--structured-choice", str(up["data"] / "data/labels.json")]
            offramp_cmd(*args, log=log(w))
        finally:
            stop_process_group(proc)

    def breakeven(w: Path, up: dict[str, Path]) -> None:
        c = cfg.cost
        args = [
            "breakeven",
            "--api",
            c.api_model,
            "--bench",
            str(up["serve"] / "bench_report.json"),
            "--requests-per-month",
            str(c.requests_per_month),
            "--peak-to-average",
            str(c.peak_to_average),
            "--out",
            str(w),
            *_host_args(cfg),
            *c.args,
        ]
        if "eval" in up:
            args += ["--eval", str(up["eval"] / "eval_report.json")]
        if "finetune" in up:
            args += ["--finetune", str(up["finetune"] / "adapter" / "finetune_report.json")]
        offramp_cmd(*args, log=log(w))

    stages = [
        Stage("pull", {"model": model}, pull),
        Stage("data", cfg.task.model_dump(), data),
    ]
    tuned = cfg.finetune.enabled
    if tuned:
        stages.append(
            Stage(
                "finetune",
                {"model": model, **cfg.finetune.model_dump()},
                finetune,
                ["pull", "data"],
                commands=("finetune",),
            )
        )
    # Downstream stages use the tuned adapter / the eval gate when those stages exist in this build.
    ft = ["finetune"] if tuned and "finetune" not in UNBUILT else []
    ev = [] if "eval" in UNBUILT else ["eval"]
    stages.append(
        Stage(
            "eval",
            {"model": model, "baselines": [baseline_spec(b.spec, b.fallback) for b in cfg.baselines], "gate": cfg.gate},
            evaluate,
            ["pull", "data", *ft],
            optional=True,
            commands=("eval",),
        )
    )
    if cfg.serve.enabled:
        stages.append(
            Stage(
                "serve",
                {"model": model, **cfg.serve.model_dump()},
                serve_bench,
                ["pull", "data", *ft],
                commands=("serve", "bench"),
            )
        )
        stages.append(
            Stage("breakeven", cfg.cost.model_dump(), breakeven, ["serve", *ev, *ft], commands=("breakeven",))
        )
    return stages


def _host_args(cfg: PipelineConfig) -> list[str]:
    c = cfg.cost
    if c.host_price_per_hour is not None:
        return ["--host-price-per-hour", str(c.host_price_per_hour)]
    return ["--host", c.host] if c.host else []


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise StageFailed(f"the server exited ({proc.returncode}): {' | '.join(tail)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise StageFailed(f"the server did not become healthy within {timeout:.0f} s")

"""The default pipeline's stages, each a thin wrapper over one `offramp <stage>` command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from offramp.data import BUILTIN
from offramp.paths import read_json
from offramp.pipeline.config import PipelineConfig
from offramp.pipeline.runner import Stage, StageFailed, console, offramp_cmd, stop_process_group
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
            str(w / "ft"),
            *(["--merge"] if quantized else []),  # the merged checkpoint is what gets quantized and served
            *_host_price_args(cfg),
            *f.args,
            log=log(w),
        )

    def quantize(w: Path, up: dict[str, Path]) -> None:
        """Each method into w/<method>/; a method this host cannot run is noted, not fatal to the pipeline."""
        src = str(up["finetune"] / "ft" / "merged") if "finetune" in up else model
        q = cfg.quantize
        outcomes = []
        for method in q.methods:
            out = w / method
            try:
                offramp_cmd(
                    "quantize", src, "--method", method, "--calib", str(up["data"] / "data/train.jsonl"),
                    "--n-heldout", str(q.n_heldout), "--out", str(out), *q.args, log=log(w),
                )  # fmt: skip
            except StageFailed as e:
                status = "not-supported" if " exited 2:" in str(e) else "failed"
                outcomes.append({"method": method, "status": status, "note": str(e)})
                _note(log(w), f"quantize {method}: {status}: {e}")
                continue
            outcomes.append({"method": method, "status": "done", "checkpoint": str(out)})
        (w / QUANTIZED).write_text(json.dumps({"source": src, "methods": outcomes}, indent=2))

    @contextmanager
    def served(w: Path, up: dict[str, Path]):
        """`offramp serve` the base model (+ the tuned adapter) on a free loopback port; yields its base URL."""
        with served_all(w, up, {}) as urls:
            yield urls["base"]

    @contextmanager
    def served_all(w: Path, up: dict[str, Path], checkpoints: dict[str, str]):
        """The base model (+ the tuned adapter) as `base`, and each checkpoint under its served name, each on its own
        free loopback port; all start together (their start-ups overlap). Yields {name: base URL}."""
        launches = {
            "base": [model, *(["--adapter", f"tuned={up['finetune'] / 'ft' / 'adapter'}"] if "finetune" in up else [])]
        }
        launches |= {name: [path] for name, path in checkpoints.items()}
        procs: dict[str, tuple[subprocess.Popen, int]] = {}
        try:
            for name, target in launches.items():
                port = _free_port()
                args = [target[0], "--name", name, "--port", str(port), *target[1:], *cfg.serve.args]
                console.print(f"  [dim]$ offramp serve {' '.join(args)}[/]")
                with open(log(w), "a") as server_log:
                    procs[name] = (
                        subprocess.Popen(
                            [sys.executable, "-m", "offramp", "serve", *args],
                            stdout=server_log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        ),
                        port,
                    )
            for proc, port in procs.values():
                _wait_healthy(proc, port, log(w))
            yield {name: f"http://127.0.0.1:{port}" for name, (_, port) in procs.items()}
        finally:
            for proc, _ in procs.values():
                stop_process_group(proc)

    def candidate(up: dict[str, Path]) -> str:
        return "tuned" if "finetune" in up else "base"

    def task_args(up: dict[str, Path]) -> list[str]:
        # A built-in task is named as such (cited scores are tied to it); eval draws the same test subset and
        # prompt as `data prepare` did (same per-label selection, seed and short system prompt).
        t = cfg.task
        if t.source in BUILTIN and t.prompt_style == "short":
            limit = ["--limit-per-label", str(t.test_per_label)] if t.test_per_label else []
            return ["--task", t.source, *limit, "--seed", str(t.seed)]
        return ["--task", str(up["data"] / "data/test.jsonl")]

    def evaluate(w: Path, up: dict[str, Path]) -> None:
        # Scored as served: through vLLM, answers constrained to the label set (and free, for comparison).
        # Each quantized checkpoint this host's vLLM serves gets its own server, up at the same time.
        quantized = quantized_systems(up.get("quantize"), candidate(up))
        (w / QUANTIZED).write_text(json.dumps(quantized, indent=2))
        for q in quantized:
            if q.get("note"):
                _note(log(w), f"eval: {q['system']} not evaluated: {q['note']}")
        with served_all(w, up, {q["system"]: q["checkpoint"] for q in quantized if q["evaluated"]}) as urls:
            url = urls["base"]
            base_answers = "" if cfg.eval.base_answers == "both" else f"+answers={cfg.eval.base_answers}"
            systems = ["--system", f"base={url}/v1+model=base{base_answers}"]
            if "finetune" in up:
                systems += ["--system", f"tuned={url}/v1+model=tuned"]
            for q in quantized:
                if q["evaluated"]:
                    systems += ["--system", f"{q['system']}={urls[q['system']]}/v1+model={q['system']}"]
            for b in cfg.baselines:
                systems += ["--system", f"{b.name}={baseline_spec(b.spec, b.fallback)}"]
            offramp_cmd(
                "eval",
                *task_args(up),
                *systems,
                "--gate",
                cfg.gate,
                "--concurrency",
                str(cfg.eval.concurrency),
                "--candidate",
                candidate(up),
                "--baseline",
                cfg.baselines[0].name,
                "--out",
                str(w),
                log=log(w),
            )
            if cfg.serve.enabled:  # benchmark the same server now: one vLLM start-up (~2 min on 2 cores) less
                try:
                    run_bench(urls["base"], w / "bench", up, log(w))
                except StageFailed as e:  # the bench stage then starts its own server
                    _note(log(w), f"eval: benchmarking this server failed, the bench stage will retry: {e}")

    def bench(w: Path, up: dict[str, Path]) -> None:
        measured = up["eval"] / "bench" if "eval" in up else None
        if measured is not None and (measured / "bench_report.json").is_file():
            shutil.copytree(measured, w, dirs_exist_ok=True)
            _note(log(w), f"bench: measured on the eval stage's server ({measured})")
            return
        with served(w, up) as url:
            run_bench(url, w, up, log(w))

    def run_bench(url: str, out: Path, up: dict[str, Path], log_path: Path) -> None:
        s = cfg.serve
        args = [
            "bench",
            url,
            "--workload",
            str(up["data"] / "data/test.jsonl"),
            "--model",
            candidate(up),
            "--concurrency",
            ",".join(map(str, s.concurrency)),
            "--num-prompts",
            str(s.num_prompts),
            "--slo-p99-ttft-s",
            str(s.slo_p99_ttft_s),
            "--slo-p99-tpot-ms",
            str(s.slo_p99_tpot_ms),
            "--out",
            str(out),
            *_host_args(cfg),
        ]
        if s.structured_choice:
            args += ["--structured-choice", str(up["data"] / "data/labels.json")]
        offramp_cmd(*args, log=log_path)

    def breakeven(w: Path, up: dict[str, Path]) -> None:
        offramp_cmd(*breakeven_args(up), "--out", str(w), log=log(w))

    def breakeven_args(up: dict[str, Path]) -> list[str]:
        c = cfg.cost
        args = [
            "breakeven",
            "--api",
            c.api_model,
            "--bench",
            str(up["bench"] / "bench_report.json"),
            "--requests-per-month",
            str(c.requests_per_month),
            "--peak-to-average",
            str(c.peak_to_average),
            *_host_args(cfg),
            *c.args,
        ]
        if "eval" in up:
            args += ["--eval", str(up["eval"] / "eval_report.json")]
        if "finetune" in up:
            args += ["--finetune", str(up["finetune"] / "ft" / "finetune_report.json")]
        return args

    def cascade(w: Path, up: dict[str, Path]) -> None:
        """The cascade as one more candidate: its curve and threshold, then its cost at the escalation it needs."""
        c = cfg.cascade
        target = ["--target", c.target] if c.target else ["--max-escalation", str(c.max_escalation)]
        offramp_cmd(
            "cascade",
            "--eval",
            str(up["eval"] / "eval_report.json"),
            "--breakeven",
            str(up["breakeven"] / "breakeven_report.json"),
            "--candidate",
            candidate(up),
            "--baseline",
            cfg.baselines[0].name,
            *target,
            "--out",
            str(w / "cascade"),
            log=log(w),
        )
        share = read_json(w / "cascade" / "cascade_report.json")["escalation_share"]
        offramp_cmd(*breakeven_args(up), "--escalation-share", str(share), "--out", str(w / "breakeven"), log=log(w))

    stages = [
        Stage("pull", {"model": model}, pull),
        Stage("data", cfg.task.model_dump(), data),
    ]
    tuned = cfg.finetune.enabled
    quantized = bool(cfg.quantize.methods)
    if tuned:
        stages.append(
            Stage(
                "finetune",
                {"model": model, **cfg.finetune.model_dump(), **({"merge": True} if quantized else {})},
                finetune,
                ["pull", "data"],
                commands=("finetune",),
            )
        )
    # Downstream stages use the tuned adapter / the eval gate when those stages exist in this build.
    ft = ["finetune"] if tuned and "finetune" not in UNBUILT else []
    ev = [] if "eval" in UNBUILT else ["eval"]
    qs = ["quantize"] if quantized and "quantize" not in UNBUILT else []
    if quantized:
        stages.append(
            Stage("quantize", {"model": model, **cfg.quantize.model_dump()}, quantize, ["pull", "data", *ft],
                  optional=True, commands=("quantize",))
        )  # fmt: skip
    eval_config = {"model": model, "baselines": [baseline_spec(b.spec, b.fallback) for b in cfg.baselines]}
    eval_config |= {
        "gate": cfg.gate,
        "eval": cfg.eval.model_dump(),
        **({"serve": cfg.serve.model_dump()} if cfg.serve.enabled else {}),  # it benchmarks its server too
        **({"quantize": cfg.quantize.model_dump()} if quantized else {}),
    }
    stages.append(
        Stage(
            "eval",
            eval_config,
            evaluate,
            ["pull", "data", *ft, *qs],
            optional=True,
            commands=("eval", "serve"),
        )
    )
    if cfg.serve.enabled:
        stages.append(
            Stage(
                "bench",
                {"model": model, **cfg.serve.model_dump()},
                bench,
                ["pull", "data", *ft, *ev],
                commands=("serve", "bench"),
            )
        )
        stages.append(
            Stage("breakeven", cfg.cost.model_dump(), breakeven, ["bench", *ev, *ft], commands=("breakeven",))
        )
        if cfg.cascade.enabled and ev:
            stages.append(
                Stage(
                    "cascade",
                    {"baseline": cfg.baselines[0].name, **cfg.cascade.model_dump()},
                    cascade,
                    ["eval", "bench", "breakeven", *ft],
                    optional=True,
                    commands=("cascade", "breakeven"),
                )
            )
    return stages


QUANTIZED = "quantized.json"  # the quantize stage's outcome per method; the eval stage's quantized systems


def quantized_systems(quantize_dir: Path | None, candidate: str) -> list[dict]:
    """The quantize stage's checkpoints as eval systems (e.g. `tuned-w8a8-int8-rtn`): evaluated where this host's
    vLLM serves the format, else skipped with the reason."""
    if quantize_dir is None or not (quantize_dir / QUANTIZED).is_file():
        return []
    systems = []
    for m in json.loads((quantize_dir / QUANTIZED).read_text())["methods"]:
        entry = {"method": m["method"], "system": f"{candidate}-{m['method']}", "evaluated": False, **m}
        if m["status"] == "done":
            report = json.loads((Path(m["checkpoint"]) / "quantize_report.json").read_text())
            if report.get("servable_by_vllm_cpu_here") or _has_cuda():
                entry["evaluated"] = True
            else:
                entry["note"] = f"vLLM cannot serve {m['method']} on this host ({report.get('vllm_cpu_note')})"
        systems.append(entry)
    return systems


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def _note(log: Path, line: str) -> None:
    console.print(f"  [yellow]note[/]: {line}")
    with open(log, "a") as f:
        f.write(f"offramp run: note: {line}\n")


def _host_args(cfg: PipelineConfig) -> list[str]:
    c = cfg.cost
    if c.host_price_per_hour is not None:
        return ["--host-price-per-hour", str(c.host_price_per_hour)]
    return ["--host", c.host] if c.host else []


def _host_price_args(cfg: PipelineConfig) -> list[str]:
    """For commands that take only an hourly price: a named host is looked up in the price catalogue."""
    c = cfg.cost
    if c.host_price_per_hour is not None:
        return ["--host-price-per-hour", str(c.host_price_per_hour)]
    if c.host:
        from offramp.cost import catalogue_host_price

        return ["--host-price-per-hour", str(catalogue_host_price(c.host)["value"])]
    return []


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

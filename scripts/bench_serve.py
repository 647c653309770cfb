"""Serving benchmark (issue 4): ratios measured in one run on one host, written as JSON.

1. overhead: `offramp serve` vs raw `python -m vllm.entrypoints.openai.api_server` with the same flags and env,
   random 256 in / 64 out, concurrency 8 (target: offramp within 3 % of raw).
2. prefix caching: a ~1.1k-token shared system prompt + distinct questions at concurrency 1, caching on vs off
   (target: >= 5x lower mean TTFT with it on), with the hit rate from /metrics.
3. vLLM vs transformers `generate`: one static batch of 8 x (256 + 64) in bf16 vs vLLM at concurrency 8
   (target: >= 3x).
Optional CPU-tuning variants (--variants): LD_PRELOAD Intel OpenMP (libiomp5, pip intel-openmp) or tcmalloc
(apt libtcmalloc-minimal4), and all cores for the engine (VLLM_CPU_NUM_OF_RESERVED_CPU=0), each vs raw.

Run it alone on the box (other load skews every number): `flock /tmp/offramp-heavy.lock python scripts/bench_serve.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso
from offramp.serve.bench import delta, hit_rate
from offramp.serve.server import VllmServer, free_port, spawn_group, stop_group, wait_until_healthy
from offramp.store import resolve_model

RANDOM_ARGS = ["--dataset-name", "random", "--random-input-len", "256", "--random-output-len", "64"]


def vllm_bench(base: str, model: str, tokenizer: str, args: list[str], concurrency: int, n: int, work: Path) -> dict:
    """One level of vLLM's own `vllm bench serve`, via offramp's driver; returns its result + /metrics deltas."""
    out = Path(tempfile.mkdtemp(dir=work))
    argv = ["--backend", "openai", "--base-url", base, "--endpoint", "/v1/completions", "--model", model]
    argv += ["--tokenizer", tokenizer, "--num-prompts", str(n), "--temperature", "0", "--seed", "0"]
    argv += ["--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99", "--save-result"]
    argv += ["--disable-tqdm", *args]
    spec = out / "spec.json"
    spec.write_text(json.dumps({"argv": argv, "concurrency": [concurrency], "out_dir": str(out), "base_url": base}))
    log = out / "bench.log"
    with open(log, "wb") as f:
        rc = subprocess.run(
            [sys.executable, "-m", "offramp.serve.vllm_bench", str(spec)], stdout=f, stderr=f
        ).returncode
    if rc != 0:
        raise SystemExit(f"vllm bench failed (exit {rc}); see {log}")
    result = json.loads((out / f"c{concurrency}.json").read_text())
    metrics = delta(json.loads((out / f"c{concurrency}.metrics.json").read_text()))
    keep = ("completed", "failed", "duration", "total_input_tokens", "total_output_tokens", "request_throughput")
    keep += ("output_throughput", "total_token_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms")
    keep += ("p99_tpot_ms", "mean_itl_ms", "mean_e2el_ms")
    row = {k: result.get(k) for k in keep}
    row["prefix_cache_hit_rate"] = hit_rate(metrics)
    if result.get("failed"):
        raise SystemExit(f"{result['failed']} requests failed; see {log}")
    return row


def wait_health(base: str, proc: subprocess.Popen, timeout: float = 900) -> float:
    """Seconds from now until the server answers /health (offramp.serve.server's poll)."""
    t0 = time.monotonic()
    wait_until_healthy(proc, base, timeout, "server", lambda: "see its log in the work dir")
    return time.monotonic() - t0


def interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C to the server's group, as a user stops `offramp serve`; then whatever is left is stopped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(60)
    stop_group(proc)


def raw_server(model: str, name: str, work: Path, env_extra: dict[str, str] | None = None, **kw):
    """Raw vLLM with exactly the flags and env offramp would use (taken from VllmServer), launched by hand."""
    spec = VllmServer(model, port=free_port(), served_model_name=name, max_model_len=2048, **kw)
    env = {**spec.environment(), **(env_extra or {})}
    log = open(work / f"raw-{spec.port}.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = spawn_group(spec.command(), stdout=log, env=env)
    startup = wait_health(spec.base_url, proc)
    return proc, spec.base_url, startup, spec.command()


def offramp_serve(ref: str, name: str, work: Path):
    port = free_port()
    cmd = [sys.executable, "-m", "offramp", "serve", ref, "--port", str(port), "--name", name]
    cmd += ["--max-model-len", "2048", "--log", str(work / f"offramp-{port}.log")]
    proc = spawn_group(cmd, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    return proc, base, wait_health(base, proc), cmd


def shared_prefix_workload(tokenizer: str, path: Path, n: int, system_tokens: int = 1100) -> dict:
    from transformers import AutoTokenizer

    from offramp.data import builtin_splits

    tok = AutoTokenizer.from_pretrained(tokenizer)
    _, test, labels = builtin_splits("banking77")
    rules = [
        f"Rule {i}: when a customer asks about {lab.replace('_', ' ')}, answer with the label {lab}."
        for i, lab in enumerate(labels, 1)
    ]
    system = "You are a bank's support classifier. Read the rules, then label the query.\n"
    i = 0
    while len(tok(system).input_ids) < system_tokens:
        system += rules[i % len(rules)] + "\n"
        i += 1
    questions = [e.text for e in random.Random(0).sample(test, n)]
    with open(path, "w") as f:
        for q in questions:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            f.write(json.dumps({"prompt": tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)}))
            f.write("\n")
    return {"system_prompt_tokens": len(tok(system).input_ids), "prompts": n}


def hf_generate(model_dir: str, batch: int = 8, inp: int = 256, out: int = 64) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    res = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(100, model.config.vocab_size - 100, (batch, inp), generator=g)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            model.generate(ids[:, :16], attention_mask=mask[:, :16], max_new_tokens=4, do_sample=False)  # warm-up
            t0 = time.perf_counter()
            gen = model.generate(
                ids, attention_mask=mask, max_new_tokens=out, min_new_tokens=out, do_sample=False, pad_token_id=0
            )
            dt = time.perf_counter() - t0
        n_out = (gen.shape[1] - inp) * batch
        res[str(dtype).removeprefix("torch.")] = {"seconds": dt, "output_tokens": n_out, "output_tok_s": n_out / dt}
    res["torch_threads"] = torch.get_num_threads()
    return res


def preload_variants(names: list[str]) -> dict[str, dict[str, str]]:
    env_lib = Path(sys.prefix) / "lib"
    iomp = sorted(glob.glob(str(env_lib / "libiomp5.so")))
    tcm = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so*") + glob.glob("/usr/lib/*/libtcmalloc.so*"))
    out: dict[str, dict[str, str]] = {}
    for name in names:
        if name == "iomp":
            out[name] = {"LD_PRELOAD": iomp[0]} if iomp else {}
        elif name == "tcmalloc":
            out[name] = {"LD_PRELOAD": tcm[0]} if tcm else {}
        elif name == "tcmalloc+iomp":
            out[name] = {"LD_PRELOAD": f"{tcm[0]}:{iomp[0]}"} if tcm and iomp else {}
        elif name == "all-cores":
            out[name] = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        else:
            raise SystemExit(f"unknown variant {name}")
    return out


@dataclass
class Run:
    """One benchmark run: its arguments, model, scratch dir, and the result written after every part."""

    args: argparse.Namespace
    model_dir: str
    work: Path
    result: dict
    t_start: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return Path(self.model_dir).name

    def bench(self, base: str, args: list[str], concurrency: int, n: int) -> dict:
        return vllm_bench(base, self.name, self.model_dir, args, concurrency, n, self.work)

    def save(self) -> None:
        self.result["wall_s"] = time.monotonic() - self.t_start
        write_json(self.args.out / "bench_serve.json", self.result)


def measure_overhead(run: Run) -> tuple[list[str], dict]:
    """1. raw vLLM vs offramp serve (same flags, same env), c=8 random; then the shared-prefix workload on offramp
    serve (caching on). Returns that workload's bench args and its result."""
    a, result = run.args, run.result
    proc, base, startup, cmd = raw_server(run.model_dir, run.name, run.work)
    try:
        raw = run.bench(base, [*RANDOM_ARGS, "--ignore-eos"], 8, a.prompts)
        raw_c1 = run.bench(base, [*RANDOM_ARGS, "--ignore-eos"], 1, a.prompts // 4)
    finally:
        stop_group(proc)
    result["raw_vllm"] = {"startup_s": startup, "command": cmd[1:], "c8": raw, "c1": raw_c1}
    run.save()
    proc, base, startup, cmd = offramp_serve(a.model, run.name, run.work)
    try:
        off = run.bench(base, [*RANDOM_ARGS, "--ignore-eos"], 8, a.prompts)
        workload = run.work / "prefix.jsonl"
        result["prefix_workload"] = shared_prefix_workload(run.model_dir, workload, a.prefix_prompts)
        custom = ["--dataset-name", "custom", "--dataset-path", str(workload), "--skip-chat-template"]
        custom += ["--custom-output-len", "16", "--ignore-eos", "--disable-shuffle"]
        prefix_on = run.bench(base, custom, 1, a.prefix_prompts)
    finally:
        interrupt(proc)
    result["offramp_serve"] = {"startup_s": startup, "command": cmd[1:], "c8": off}
    result["ratios"] = {
        "offramp_over_raw_output_tok_s": off["output_throughput"] / raw["output_throughput"],
        "offramp_over_raw_mean_ttft": off["mean_ttft_ms"] / raw["mean_ttft_ms"],
    }
    run.save()
    return custom, prefix_on


def measure_prefix_caching_off(run: Run, custom: list[str], prefix_on: dict) -> None:
    """2. prefix caching off, same workload."""
    proc, base, _startup, _cmd = raw_server(run.model_dir, run.name, run.work, prefix_caching=False)
    try:
        prefix_off = run.bench(base, custom, 1, run.args.prefix_prompts)
    finally:
        stop_group(proc)
    run.result["prefix_caching"] = {"on": prefix_on, "off": prefix_off}
    run.result["ratios"]["prefix_off_over_on_mean_ttft"] = prefix_off["mean_ttft_ms"] / prefix_on["mean_ttft_ms"]
    run.result["ratios"]["prefix_hit_rate_on"] = prefix_on["prefix_cache_hit_rate"]
    run.save()


def measure_transformers(run: Run) -> None:
    """3. transformers generate, static batch 8 x (256 + 64)."""
    result = run.result
    result["transformers_generate"] = hf = hf_generate(run.model_dir)
    if "raw_vllm" in result:
        vllm_tok_s = result["raw_vllm"]["c8"]["output_throughput"]
        result["ratios"]["vllm_c8_over_hf_bf16_output_tok_s"] = vllm_tok_s / hf["bfloat16"]["output_tok_s"]
        result["ratios"]["vllm_c8_over_hf_fp32_output_tok_s"] = vllm_tok_s / hf["float32"]["output_tok_s"]
    run.save()


def measure_variants(run: Run) -> None:
    """4. CPU tuning variants, each vs the raw baseline of this run."""
    result = run.result
    for vname, env in preload_variants([v for v in run.args.variants.split(",") if v]).items():
        if not env:
            result.setdefault("variants", {})[vname] = {"skipped": "library not found on this host"}
            continue
        proc, base, startup, _cmd = raw_server(run.model_dir, run.name, run.work, env_extra=env)
        try:
            row = run.bench(base, [*RANDOM_ARGS, "--ignore-eos"], 8, run.args.prompts)
        finally:
            stop_group(proc)
        entry = {"env": env, "startup_s": startup, "c8": row}
        if "raw_vllm" in result:
            entry["output_tok_s_over_raw"] = row["output_throughput"] / result["raw_vllm"]["c8"]["output_throughput"]
        result.setdefault("variants", {})[vname] = entry
        run.save()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--out", type=Path, default=Path("serve/results"))
    ap.add_argument("--prompts", type=int, default=48, help="requests per random-workload run")
    ap.add_argument("--prefix-prompts", type=int, default=16)
    ap.add_argument("--variants", default="", help="comma list: iomp,tcmalloc,tcmalloc+iomp,all-cores")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: overhead,prefix,hf")
    return ap.parse_args()


def main() -> None:
    a = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: stop the servers
    skip = set(filter(None, a.skip.split(",")))
    result: dict = {
        "benchmark": "serve",
        "created_at": now_iso(),
        "hardware": hardware_info(),
        "model": a.model,
        "contention_note": "2-core box shared with other engineers' jobs; heavy jobs serialised with flock",
        "load_generator": "vllm bench serve (vllm.benchmarks.serve.main via offramp.serve.vllm_bench)",
        "workload_random": {"input_len": 256, "output_len": 64, "prompts": a.prompts, "concurrency": 8},
    }
    run = Run(a, resolve_model(a.model), Path(tempfile.mkdtemp(prefix="offramp-bench-serve-")), result)
    if "overhead" not in skip:
        custom, prefix_on = measure_overhead(run)
        if "prefix" not in skip:
            measure_prefix_caching_off(run, custom, prefix_on)
    if "hf" not in skip:
        measure_transformers(run)
    measure_variants(run)
    run.save()
    print(json.dumps(result.get("ratios", {}), indent=2))
    print(f"wrote {a.out / 'bench_serve.json'} (logs in {run.work})")


if __name__ == "__main__":
    main()

"""Classifier head vs constrained generation (issue 19.6): one run, one host, written as JSON.

1. the default pipeline's Banking77 data (20 train rows per label, the 231-query test subset);
2. `offramp finetune --head classify` (the classify recipe; --max-steps overrides its budget);
3. `offramp bench` of SmolLM2 with answers constrained to the 77 labels (vLLM structured outputs, the LM head's
   serving path) and of the classifier through its chat face (/pooling, task classify), at c = 1, 4, 16, the
   same prompts, one server at a time so neither takes CPU from the other; then vLLM's pooling server alone (no
   router), to show what the router costs; the classifier gets more requests per level (it is ~10x faster, and a
   level of a few seconds is noise);
4. `offramp eval` of the classifier on the 231 queries (the LM head's accuracy at the default budget is read from
   the committed default run, scripts/results/offramp_run_default_cpu.json);
5. `offramp breakeven` against gpt-4o-mini on the default workload with each bench.

Run it alone on the box: `.venv/bin/python scripts/bench_classifier.py` (~20 min on 2 cores; `--work DIR` keeps
the steps' outputs and skips the steps already done). Ratios, not absolute times, compare across machines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso
from offramp.serve.server import free_port, spawn_group, stop_group, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
DEFAULT_RUN = ROOT / "scripts" / "results" / "offramp_run_default_cpu.json"


def offramp(*args: str, log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ offramp {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "offramp", *args], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"offramp {args[0]} failed (exit {proc.returncode}); see {log}")


@contextmanager
def served(target: str, log: Path):
    """`offramp serve TARGET` on a free loopback port until the block ends; yields its base URL."""
    port = free_port()
    with open(log, "a") as f:
        proc = spawn_group([sys.executable, "-m", "offramp", "serve", target, "--port", str(port)], stdout=f)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, 900, f"offramp serve {target}", lambda: f"see {log}")
        yield url
    finally:
        stop_group(proc)


@contextmanager
def vllm_alone(checkpoint: Path, log: Path):
    """vLLM's pooling server for `checkpoint` without offramp's router in front: what the router costs."""
    from offramp.envs import ensure_env
    from offramp.serve.server import VllmServer

    with VllmServer(checkpoint, port=free_port(), python=str(ensure_env("runtime")), log_path=log) as server:
        yield server.api_base.removesuffix("/v1")


def bench(url: str, out: Path, log: Path, args: argparse.Namespace, extra: list[str], n: int) -> None:
    load = ["--workload", str(args.work / "data" / "test.jsonl"), "--concurrency", args.concurrency]
    offramp("bench", url, *load, "--num-prompts", str(n), "--host", args.host, "--out", str(out), *extra,
            log=log)  # fmt: skip


def points(report: dict) -> list[dict]:
    keep = ("concurrency", "requests_per_s", "input_tokens_per_s", "output_tokens_per_s")
    return [
        {**{k: p[k] for k in keep}, "p50_latency_ms": p["e2el_ms"]["p50"], "p99_latency_ms": p["e2el_ms"]["p99"]}
        for p in report["points"]
    ]


def breakeven(bench_dir: Path, out: Path, log: Path, args: argparse.Namespace) -> dict:
    offramp("breakeven", "--api", "gpt-4o-mini", "--bench", str(bench_dir / "bench_report.json"),
            "--requests-per-month", "1000000", "--peak-to-average", "3.0", "--host", args.host,
            "--api-prompts", str(args.work / "data" / "api_prompts.jsonl"), "--out", str(out), log=log)  # fmt: skip
    body = json.loads((out / "breakeven_report.json").read_text())
    sh = body["self_hosted"]["cost"]
    return {
        "verdict": body["decision"]["verdict"],
        "api_monthly_usd": body["api"]["cost"]["monthly_usd"]["value"],
        "self_hosted_monthly_usd": sh["monthly_usd"]["value"],
        "capacity_rps_per_replica": sh["capacity_rps"]["value"],
        "break_even": body.get("break_even"),
        "split_rule": body["self_hosted"]["split_rule"],
    }


def train_classifier(w: Path, log: Path, max_steps: int | None) -> dict:
    """The default pipeline's Banking77 data in w/data and the classify recipe's head in w/cls (each step skipped
    where a kept work dir has its output); returns the finetune report."""
    if not (w / "data" / "labels.json").is_file():
        offramp("data", "prepare", "banking77", "--out", str(w / "data"), "--per-label", "20",
                "--test-per-label", "3", "--seed", "0", "--prompt-style", "short", log=log)  # fmt: skip
    steps = ["--max-steps", str(max_steps)] if max_steps else []
    if not (w / "cls" / "finetune_report.json").is_file():
        offramp("finetune", MODEL, "--data", str(w / "data" / "train.jsonl"), "--head", "classify",
                "--out", str(w / "cls"), *steps, log=log)  # fmt: skip
    return json.loads((w / "cls" / "finetune_report.json").read_text())


def eval_classifier(url: str, out: Path, log: Path) -> None:
    """`offramp eval` of a served classifier (its chat face) on the 231-query Banking77 subset, free answers."""
    offramp("eval", "--task", "banking77", "--limit-per-label", "3", "--seed", "0",
            "--system", f"classifier={url}/v1+model=classifier+answers=free", "--no-baseline",
            "--out", str(out), log=log)  # fmt: skip


def lm_head_accuracy() -> dict | None:
    if not DEFAULT_RUN.is_file():
        return None
    run = json.loads(DEFAULT_RUN.read_text())
    tuned = run["quality"]["tuned"]
    where = f"{DEFAULT_RUN.relative_to(ROOT)} (the default `offramp run`: LM head, default recipe)"
    return {"accuracy": tuned["accuracy"], "mode": tuned["mode"], "hardware": run["hardware"], "source": where}


def run_steps(args: argparse.Namespace, log: Path) -> tuple[dict, dict, dict, dict, dict]:
    """Train, bench both heads and vLLM alone, eval the classifier; each step skipped when its report is in --work.
    Returns the finetune, generation bench, classifier bench, vLLM-alone bench and classifier eval reports."""
    w = args.work
    ft = train_classifier(w, log, args.max_steps)

    labels = str(w / "data" / "labels.json")
    if not (w / "bench-gen" / "bench_report.json").is_file():
        with served(MODEL, log) as url:
            bench(url, w / "bench-gen", log, args, ["--structured-choice", labels], args.num_prompts)
    gen = json.loads((w / "bench-gen" / "bench_report.json").read_text())
    if not (w / "bench-cls" / "bench_report.json").is_file() or not (w / "eval-cls" / "eval_report.json").is_file():
        with served(str(w / "cls" / "merged"), log) as url:
            bench(url, w / "bench-cls", log, args, [], args.classifier_num_prompts)
            eval_classifier(url, w / "eval-cls", log)
    if not (w / "bench-cls-direct" / "bench_report.json").is_file():
        with vllm_alone(w / "cls" / "merged", w / "vllm-alone.log") as url:
            bench(url, w / "bench-cls-direct", log, args, [], args.classifier_num_prompts)
    cls = json.loads((w / "bench-cls" / "bench_report.json").read_text())
    direct = json.loads((w / "bench-cls-direct" / "bench_report.json").read_text())
    ev = json.loads((w / "eval-cls" / "eval_report.json").read_text())
    return ft, gen, cls, direct, ev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "serve" / "results" / "classifier_vs_generation.json")
    ap.add_argument("--max-steps", type=int, default=None, help="classifier training steps (default: the recipe's)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--num-prompts", type=int, default=128, help="requests per load level, generation")
    ap.add_argument(
        "--classifier-num-prompts",
        type=int,
        default=256,
        help="requests per load level, classifier (~10x faster: more requests for as long a level)",
    )
    ap.add_argument("--host", default="aws-c7i-xlarge")
    ap.add_argument("--work", type=Path, default=None, help="keep the intermediate artifacts here")
    args = ap.parse_args()
    args.work = args.work or Path(tempfile.mkdtemp(prefix="offramp-cls-"))
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "bench_classifier.log"
    print(f"work dir {args.work}; log {log}", flush=True)

    ft, gen, cls, direct, ev = run_steps(args, log)
    system = next(s for s in ev["systems"] if s["name"] == "classifier")

    gen_points, cls_points, direct_points = points(gen), points(cls), points(direct)
    body = {
        "what": "SmolLM2-135M-Instruct on Banking77 (77 labels): a LoRA classifier head served by vLLM's pooling "
        "runner through offramp's chat face vs the base model answering by constrained generation "
        "(structured outputs over the labels), the same prompts, one server at a time",
        "measured_at": cls.get("created_at") or now_iso(),  # when the benches ran (a re-run may reuse them)
        "hardware": hardware_info(),
        "source": "measured here by scripts/bench_classifier.py",
        "workload": {
            "prompts": gen["workload"]["description"],
            "num_prompts_per_level": {"generation": args.num_prompts, "classifier": args.classifier_num_prompts},
            "prompt_tokens_mean": cls["workload"]["prompt_tokens_mean"],
        },  # fmt: skip
        "constrained_generation": {"model": MODEL, "points": gen_points, "cost": gen.get("cost")},
        "classifier": {
            "model": f"{MODEL} + LoRA classify head",
            "path": "offramp's chat face (router) in front of vLLM's pooling runner, /pooling passed through",
            "points": cls_points,
            "cost": cls.get("cost"),
        },
        "classifier_vllm_alone": {
            "model": f"{MODEL} + LoRA classify head",
            "path": "vLLM's pooling runner alone (no router): what the router costs",
            "points": direct_points,
        },
        "requests_per_s_ratio": {
            str(g["concurrency"]): c["requests_per_s"] / g["requests_per_s"]
            for g, c in zip(gen_points, cls_points, strict=True)
        },
        "requests_per_s_ratio_at_peak": max(p["requests_per_s"] for p in cls_points)
        / max(p["requests_per_s"] for p in gen_points),
        "accuracy": {
            "classifier": {
                "accuracy": system["accuracy"],
                "macro_f1": system.get("macro_f1"),
                "n_queries": ev.get("n_queries"),
                "train_steps": ft.get("steps"),
                "train_wall_s": ft.get("wall_time_s"),
                "scorer": "argmax of the head (the chat face's label)",
            },
            "lm_head_default_run": lm_head_accuracy(),
        },  # fmt: skip
        "breakeven": {
            "constrained_generation": breakeven(args.work / "bench-gen", args.work / "be-gen", log, args),
            "classifier": breakeven(args.work / "bench-cls", args.work / "be-cls", log, args),
        },
    }
    write_json(args.out, body)
    print(json.dumps({"ratio": body["requests_per_s_ratio"], "accuracy": body["accuracy"]}, indent=2))


if __name__ == "__main__":
    main()

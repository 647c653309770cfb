"""W8A8 of the classifier head (issue 19.2): size, labels kept, served accuracy and speed; one run, written as JSON.

1. the default pipeline's Banking77 data and the classify recipe's head (as scripts/bench_classifier.py makes them;
   a kept --work dir of that script is reused);
2. `offramp quantize` of the merged classifier with w8a8-int8-rtn (data-free) and w8a8-int8 (SmoothQuant + GPTQ,
   calibrated on the 1,540 training prompts), each checked on the 231 test prompts in transformers (accuracy and
   agreement with the bf16 head's label, INT8 activations emulated as vLLM runs them);
3. for the bf16 head and each quantized checkpoint, one at a time: `offramp serve` (vLLM's pooling runner behind
   the chat face), `offramp eval` on the same 231 queries, and `offramp bench` at c = 1, 4, 16;
4. the served labels compared query by query with the bf16 head's.

Run it alone on the box: `.venv/bin/python scripts/quantize_classifier.py --work DIR` (~25 min on 2 cores; steps
whose outputs the work dir holds are skipped). Ratios within one run, not absolute times, compare across machines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_classifier import bench, eval_classifier, offramp, points, served, train_classifier

from offramp.artifacts import load_report
from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("w8a8-int8-rtn", "w8a8-int8")
QUANTIZE_KEEP = (
    "scheme", "size_bytes", "base_size_bytes", "size_ratio", "linear_bytes", "base_linear_bytes",
    "linear_compression", "accuracy", "base_accuracy", "accuracy_change_pts", "label_agreement", "max_prob_diff",
    "mean_prob_diff", "quantize_time_s", "calibration", "heldout", "library_versions",
)  # fmt: skip


def quantize(w: Path, method: str, log: Path) -> dict:
    out = w / f"q-{method}"
    if not (out / "quantize_report.json").is_file():
        offramp("quantize", str(w / "cls" / "merged"), "--method", method, "--calib", str(w / "data" / "train.jsonl"),
                "--n-calib", "128", "--n-heldout", "231", "--out", str(out), "--overwrite", log=log)  # fmt: skip
    report = load_report(out / "quantize_report.json", "quantize").model_dump()
    return {k: report.get(k) for k in QUANTIZE_KEEP}


def serve_eval_bench(w: Path, name: str, checkpoint: Path, log: Path, args: argparse.Namespace) -> dict:
    ev_dir, bench_dir = w / f"qeval-{name}", w / f"qbench-{name}"
    if not (ev_dir / "eval_report.json").is_file() or not (bench_dir / "bench_report.json").is_file():
        with served(str(checkpoint), log) as url:
            eval_classifier(url, ev_dir, log)
            bench(url, bench_dir, log, args, [], args.num_prompts)
    ev = json.loads((ev_dir / "eval_report.json").read_text())
    report = json.loads((bench_dir / "bench_report.json").read_text())
    system = next(s for s in ev["systems"] if s["name"] == "classifier")
    answers = [q["free"]["answer"] for q in system["queries"]]
    return {
        "checkpoint": str(checkpoint.relative_to(w)),
        "served_accuracy": system["accuracy"],
        "served_macro_f1": system.get("macro_f1"),
        "benched_at": report.get("created_at"),
        "points": points(report),
        "answers": answers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "quantize" / "results" / "classifier_w8a8_cpu.json")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--num-prompts", type=int, default=256, help="requests per load level")
    ap.add_argument("--host", default="aws-c7i-xlarge")
    ap.add_argument("--work", type=Path, default=None, help="keep the intermediate artifacts here")
    args = ap.parse_args()
    args.work = args.work or Path(tempfile.mkdtemp(prefix="offramp-clsq-"))
    w, log = args.work, args.work / "quantize_classifier.log"
    print(f"work dir {w}; log {log}", flush=True)

    ft = train_classifier(w, log, None)
    quantized = {m: quantize(w, m, log) for m in METHODS}
    checkpoints = {"bf16": w / "cls" / "merged", **{m: w / f"q-{m}" for m in METHODS}}
    systems = {name: serve_eval_bench(w, name, ckpt, log, args) for name, ckpt in checkpoints.items()}

    answers = {name: s.pop("answers") for name, s in systems.items()}
    bf16 = systems["bf16"]
    for name, s in systems.items():
        same = sum(a == b for a, b in zip(answers[name], answers["bf16"], strict=True))
        s["served_label_agreement_with_bf16"] = round(same / len(answers["bf16"]), 4)
        s["requests_per_s_ratio_vs_bf16"] = {
            str(p["concurrency"]): round(p["requests_per_s"] / b["requests_per_s"], 3)
            for p, b in zip(s["points"], bf16["points"], strict=True)
        }
        if name in quantized:
            s["quantize"] = quantized[name]
    body = {
        "what": "SmolLM2-135M-Instruct's LoRA classifier head on Banking77 (77 labels), bf16 vs W8A8 (INT8 weights "
        "and per-token INT8 activations, the score head and down_proj kept bf16), each served by vLLM's pooling "
        "runner behind offramp's chat face, one server at a time, the same 231 test queries",
        "measured_at": now_iso(),
        "hardware": hardware_info(),
        "source": "measured here by scripts/quantize_classifier.py",
        "classifier": {"train_steps": ft.get("steps"), "train_wall_s": ft.get("wall_time_s")},
        "num_prompts_per_level": args.num_prompts,
        "systems": systems,
    }
    write_json(args.out, body)
    summary = {n: (s["served_accuracy"]["value"], s["requests_per_s_ratio_vs_bf16"]) for n, s in systems.items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

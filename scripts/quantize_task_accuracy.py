"""Task accuracy of quantized fine-tuned checkpoints vs the unquantized one, as served (issue 5).

    python scripts/quantize_task_accuracy.py --merged runs/x/ft/merged \\
        [--methods gptq-w4a16,w8a8-int8-rtn,w8a8-int8,bnb-nf4,bnb-int8] [--task banking77 --limit-per-label 3]

Each method runs through `offramp quantize` on the merged tuned model (calibrated on the task's train split, with
its reload check). A checkpoint this host's vLLM cannot serve (GPTQ W4A16 on AVX2-only CPUs) is evaluated through
`offramp quantize emulate` (its dequantized weights, checked against it), marked as such. Every such checkpoint is
served by vLLM and scored by `offramp eval` on the same queries with constrained answers (vLLM's structured
outputs), against the unquantized model served the same way.

bitsandbytes checkpoints no vLLM serves: they are scored in-process by transformers' generate, greedy and
constrained to the labels (the choice vLLM's structured outputs make), against the unquantized model scored the same
way (`bf16-hf`), so each change is measured with one scorer. The summary JSON gives each accuracy with its 95 %
interval and the change in points vs its reference. Run alone on the box:
`flock /tmp/offramp-heavy.lock python scripts/quantize_task_accuracy.py …`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from offramp.evals.metrics import INVALID, paired_difference, score
from offramp.evals.scorers import HF_PREFIX_CONSTRAINED_GREEDY, VLLM_STRUCTURED_CHOICE, PrefixConstrainedGreedy
from offramp.evals.tasks import load_task
from offramp.hardware import cpu_has_avx512, hardware_info, model_dtype
from offramp.paths import write_json
from offramp.quantize.methods import get_method
from offramp.reports import now_iso
from offramp.serve.server import VllmServer

REFERENCE = {"vllm": "bf16", "hf": "bf16-hf"}  # the unquantized model's name under each scorer
SCORER = {"vllm": VLLM_STRUCTURED_CHOICE, "hf": HF_PREFIX_CONSTRAINED_GREEDY}  # its name in offramp.evals.scorers
SCORERS = {
    "vllm": "served by vLLM, constrained decoding (structured outputs: choice)",
    "hf": "transformers generate in-process (float32 CPU; bnb's own compute dtype), greedy, constrained to the labels",
}


def offramp(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "offramp", *args])
    if proc.returncode != 0:
        raise SystemExit(f"offramp {' '.join(args[:2])} failed (exit {proc.returncode})")


def checkpoints(merged: Path, methods: list[str], out: Path, calib: str, n_calib: int) -> dict[str, dict]:
    """{system name: {path, method, emulated, scorer}}, with the unquantized merged model for each scorer used."""
    found: dict[str, dict] = {}
    for name in methods:
        method = get_method(name)
        ckpt = out / name
        if not (ckpt / "quantize_report.json").is_file():
            offramp("quantize", str(merged), "--method", name, "--calib", calib, "--n-calib", str(n_calib),
                    "--out", str(ckpt), "--overwrite")  # fmt: skip
        emulated = method.vllm_cpu_needs_avx512 and not cpu_has_avx512()
        if emulated:
            dense = out / f"{name}-emulated"
            if not (dense / "emulate_report.json").is_file():
                offramp("quantize", "emulate", str(ckpt), "--out", str(dense), "--overwrite")
            ckpt = dense
        scorer = "vllm" if method.servable_by_vllm_cpu else "hf"
        found.setdefault(REFERENCE[scorer], {"path": merged, "method": None, "emulated": False, "scorer": scorer})
        found[name] = {"path": ckpt, "method": name, "emulated": emulated, "scorer": scorer}
    return found


def score_served(found: dict[str, dict], task: list[str], concurrency: int, out: Path) -> dict[str, dict]:
    servers = []
    try:
        for name, c in found.items():  # all up together: their start-ups overlap
            servers.append(VllmServer(c["path"], served_model_name=name, max_model_len=2048))
            servers[-1].start()
        systems = [f"--system={s.model_name}={s.api_base}+model={s.model_name}+answers=constrained" for s in servers]
        quantized = next(n for n in found if n != REFERENCE["vllm"])  # the gate's candidate, not the baseline
        offramp("eval", "--task", *task, *systems, "--baseline", REFERENCE["vllm"], "--candidate", quantized,
                "--concurrency", str(concurrency), "--out", str(out))  # fmt: skip
    finally:
        for s in servers:
            s.stop()
    return served_report(out)


def served_report(out: Path) -> dict:
    """The eval report, with each system's constrained answer per query as `preds` and the gold labels."""
    report = json.loads((out / "eval_report.json").read_text())
    report["gold"] = [q["gold"] for q in report["queries"]]
    for s in report["systems"]:
        s["preds"] = [q["constrained"]["label"] for q in s["queries"]]
    return report


def hf_constrained_preds(path: Path, messages: list[list[dict]], labels: list[str]) -> list[int]:
    """hf-prefix-constrained-greedy (offramp.evals.scorers): the decision vLLM's structured-outputs choice makes, for
    checkpoints vLLM cannot load (bitsandbytes). Per-label log-likelihood would cost 77 forward passes a query."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=model_dtype("eval", "cpu"), device_map="cpu").eval()
    return PrefixConstrainedGreedy(model, tok).predict(messages, labels)


def score_in_process(found: dict[str, dict], task_name: str, limit_per_label: int | None, out: Path) -> dict:
    """Score each checkpoint with `hf_constrained_preds` on the eval task's queries; a small eval-like report."""
    task = load_task(task_name, per_label=limit_per_label or None)
    gold = [task.labels.index(q.label) for q in task.queries]
    systems, preds = [], {}
    for name, c in found.items():
        t = time.monotonic()
        preds[name] = hf_constrained_preds(c["path"], [q.messages for q in task.queries], task.labels)
        scored = {**score(gold, preds[name], len(task.labels)), "scorer": HF_PREFIX_CONSTRAINED_GREEDY}
        system = {"name": name, "modes": {"constrained": scored}, "wall_s": round(time.monotonic() - t, 1)}
        system["preds"] = [task.labels[i] if i != INVALID else None for i in preds[name]]
        systems.append(system)
        print(f"{name}: {scored['accuracy']}", flush=True)
    report = {"n_queries": len(gold), "gold": [q.label for q in task.queries], "systems": systems}
    write_json(out / "hf_scores.json", report)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merged", type=Path, required=True, help="the merged fine-tuned checkpoint")
    ap.add_argument("--methods", default="gptq-w4a16,w8a8-int8-rtn")
    ap.add_argument("--task", default="banking77")
    ap.add_argument("--limit-per-label", type=int, default=3)
    ap.add_argument("--calib", default="banking77")
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("runs/quantize-task-accuracy"))
    ap.add_argument("--reuse", action="store_true", help="reuse the served scores already in OUT/eval")
    a = ap.parse_args()
    t0 = time.monotonic()
    found = checkpoints(a.merged.resolve(), [m for m in a.methods.split(",") if m], a.out, a.calib, a.n_calib)
    task = [a.task, "--limit-per-label", str(a.limit_per_label)] if a.limit_per_label else [a.task]
    acc, diff, reports = {}, {}, {}
    for scorer in ("vllm", "hf"):
        group = {n: c for n, c in found.items() if c["scorer"] == scorer}
        if not group:
            continue
        out = a.out / ("eval" if scorer == "vllm" else "eval-hf")
        t = time.monotonic()
        reused = scorer == "vllm" and a.reuse and (out / "eval_report.json").is_file()
        if reused:
            reports[scorer] = served_report(out)
        elif scorer == "vllm":
            reports[scorer] = score_served(group, task, a.concurrency, out)
        else:
            reports[scorer] = score_in_process(group, a.task, a.limit_per_label, out)
        reports[scorer]["scoring_wall_s"] = None if reused else round(time.monotonic() - t, 1)  # None: scored before
        acc |= {s["name"]: s["modes"]["constrained"]["accuracy"] for s in reports[scorer]["systems"]}
        preds = {s["name"]: s["preds"] for s in reports[scorer]["systems"]}
        gold = reports[scorer]["gold"]
        diff |= {n: paired_difference(gold, p, preds[REFERENCE[scorer]]) for n, p in preds.items()}
    rows = []
    for name, c in found.items():
        reference = REFERENCE[c["scorer"]]
        row = {"system": name, "method": c["method"], "checkpoint": str(c["path"]), "scored_by": SCORERS[c["scorer"]]}
        row["scorer"] = SCORER[c["scorer"]]
        row["accuracy"] = acc[name]
        if c["emulated"]:
            row["emulated"] = "dense copy of the GPTQ weights (offramp quantize emulate): this host's vLLM has no W4A16"
        if c["method"]:
            row["reference"] = reference
            row["change_points"] = round(acc[name]["value"] - acc[reference]["value"], 2)
            row["change_paired_95ci"] = {k: diff[name][k] for k in ("ci_low", "ci_high")}
            row["quantize_report"] = json.loads((a.out / name / "quantize_report.json").read_text())
        rows.append(row)
    n_queries = {r["n_queries"] for r in reports.values()}
    assert len(n_queries) == 1, n_queries
    write_json(
        a.out / "task_accuracy.json",
        {
            "what": "Banking77 accuracy (constrained answers), quantized vs unquantized tuned model, one scorer a pair",
            "source": "measured",
            "created_at": now_iso(),
            "hardware": hardware_info(),
            "merged_model": str(a.merged.resolve()),
            "n_queries": n_queries.pop(),
            "scoring_wall_s": {k: r["scoring_wall_s"] for k, r in reports.items()},
            "rows": rows,
            "wall_s": round(time.monotonic() - t0, 1),
        },
    )
    for r in rows:
        print(f"{r['system']:<16} {r['accuracy']['value']:5.1f} [{r['accuracy']['ci_low']:.1f}, "
              f"{r['accuracy']['ci_high']:.1f}]  {r.get('change_points', 0):+.1f} {r.get('change_paired_95ci', '')}")  # noqa: E501  # fmt: skip


if __name__ == "__main__":
    main()

"""Task accuracy of quantized fine-tuned checkpoints vs the unquantized one, as served (issue 5).

    python scripts/quantize_task_accuracy.py --merged runs/x/ft/merged \\
        [--methods gptq-w4a16,w8a8-int8-rtn,w8a8-int8] [--task banking77 --limit-per-label 3] [--out DIR]

Each method runs through `offramp quantize` on the merged tuned model (calibrated on the task's train split, with
its reload check). A checkpoint this host's vLLM cannot serve (GPTQ W4A16 on AVX2-only CPUs) is evaluated through
`offramp quantize emulate` (its dequantized weights, checked against it), marked as such. Every checkpoint is then
served by vLLM, scored by `offramp eval` on the same queries with constrained answers, and the summary JSON gives
each accuracy with its 95 % interval and the change in points vs the unquantized model. Run alone on the box:
`flock /tmp/offramp-heavy.lock python scripts/quantize_task_accuracy.py …`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from offramp.quantize.measure import cpu_has_avx512
from offramp.quantize.methods import get_method
from offramp.serve.server import VllmServer

from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso


def offramp(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "offramp", *args])
    if proc.returncode != 0:
        raise SystemExit(f"offramp {' '.join(args[:2])} failed (exit {proc.returncode})")


def checkpoints(merged: Path, methods: list[str], out: Path, calib: str, n_calib: int) -> dict[str, dict]:
    """{system name: {path, method, emulated}} with the unquantized merged model first."""
    found = {"bf16": {"path": merged, "method": None, "emulated": False}}
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
        found[name] = {"path": ckpt, "method": name, "emulated": emulated}
    return found


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
    a = ap.parse_args()
    t0 = time.monotonic()
    found = checkpoints(a.merged.resolve(), [m for m in a.methods.split(",") if m], a.out, a.calib, a.n_calib)
    servers = []
    try:
        for name, c in found.items():  # all up together: their start-ups overlap
            servers.append(VllmServer(c["path"], served_model_name=name, max_model_len=2048))
            servers[-1].start()
        systems = [f"--system={s.model_name}={s.api_base}+model={s.model_name}+answers=constrained" for s in servers]
        task = [a.task, "--limit-per-label", str(a.limit_per_label)] if a.limit_per_label else [a.task]
        offramp("eval", "--task", *task, *systems, "--concurrency", str(a.concurrency), "--out", str(a.out / "eval"))
    finally:
        for s in servers:
            s.stop()
    report = json.loads((a.out / "eval" / "eval_report.json").read_text())
    acc = {s["name"]: s["accuracy"] for s in report["systems"] if s.get("mode") == "constrained"}
    rows = []
    for name, c in found.items():
        row = {"system": name, "method": c["method"], "checkpoint": str(c["path"]), "accuracy": acc[name]}
        if c["emulated"]:
            row["emulated"] = "dense copy of the GPTQ weights (offramp quantize emulate): this host's vLLM has no W4A16"
        if name != "bf16":
            row["change_points"] = round(acc[name]["value"] - acc["bf16"]["value"], 2)
            row["quantize_report"] = json.loads((a.out / name / "quantize_report.json").read_text())
        rows.append(row)
    write_json(
        a.out / "task_accuracy.json",
        {
            "what": "Banking77 accuracy (constrained answers, served by vLLM) of quantized vs unquantized tuned model",
            "source": "measured",
            "created_at": now_iso(),
            "hardware": hardware_info(),
            "merged_model": str(a.merged.resolve()),
            "n_queries": report["n_queries"],
            "rows": rows,
            "wall_s": round(time.monotonic() - t0, 1),
        },
    )
    for r in rows:
        print(f"{r['system']:<16} {r['accuracy']['value']:5.1f} [{r['accuracy']['ci_low']:.1f}, "
              f"{r['accuracy']['ci_high']:.1f}]  {r.get('change_points', 0):+.1f}")  # fmt: skip


if __name__ == "__main__":
    main()

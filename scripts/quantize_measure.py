"""Quantize one model with several methods and collect the size / perplexity numbers the README quotes.

    python scripts/quantize_measure.py [--model smollm2-135m-instruct]
        [--methods bnb-int8,bnb-nf4,gptq-w4a16,gptq-w4a16:no-sym] [--out runs/quantize-measure]
        [--calib banking77] [--summary quantize/results/FILE.json]

Each method runs through `offramp quantize` (in its own env, with its reload check); the summary JSON lists, per
method, linear-layer and whole-checkpoint size vs the original, perplexity change and time, with the hardware.
Wrap it in `flock /tmp/offramp-heavy.lock` on shared hosts: GPTQ on SmolLM2-135M takes ~10 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from offramp.artifacts import load_report
from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--methods", default="bnb-int8,bnb-nf4,gptq-w4a16,gptq-w4a16:no-sym")
    ap.add_argument("--calib", default="banking77")
    ap.add_argument("--out", type=Path, default=Path("runs/quantize-measure"))
    ap.add_argument("--reuse", action="store_true", help="keep checkpoints already quantized under --out")
    ap.add_argument("--summary", type=Path, default=None, help="the JSON (default: OUT/quantize_measure.json)")
    args = ap.parse_args()

    rows = []
    for spec in args.methods.split(","):
        method, _, variant = spec.partition(":")  # gptq-w4a16:no-sym: asymmetric GPTQ (zero points)
        ckpt = args.out / f"{Path(args.model).name}-{method}{'-' + variant if variant else ''}"
        if not (args.reuse and (ckpt / "quantize_report.json").is_file()):
            cmd = [sys.executable, "-m", "offramp", "quantize", args.model, "--method", method]
            cmd += ["--calib", args.calib, "--out", str(ckpt), "--overwrite"] + ([f"--{variant}"] if variant else [])
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                rows.append({"method": spec, "failed": f"exit {proc.returncode}"})
                continue
        r = load_report(ckpt / "quantize_report.json", "quantize")
        x = r.model_extra
        rows.append(
            {
                "method": spec,
                "library_versions": x["library_versions"],
                "linear_bytes": r.linear_bytes,
                "base_linear_bytes": x["base_linear_bytes"],
                "linear_compression": r.linear_compression,
                "checkpoint_bytes": r.size_bytes,
                "base_checkpoint_bytes": r.base_size_bytes,
                "checkpoint_ratio": r.size_ratio,
                "perplexity": r.perplexity,
                "base_perplexity": r.base_perplexity,
                "perplexity_change_pct": r.perplexity_change_pct,
                "quantize_time_s": r.quantize_time_s,
                "servable_by_vllm_cpu": r.servable_by_vllm_cpu,
                "settings": x["settings"],
                "calibration": x["calibration"],
                "heldout": x["heldout"],
            }
        )
    summary = {
        "stage": "quantize-measure",
        "created_at": now_iso(),
        "source": "measured",
        "hardware": hardware_info(),
        "model": args.model,
        "results": rows,
    }
    path = args.summary or args.out / "quantize_measure.json"
    write_json(path, summary)
    print(path)


if __name__ == "__main__":
    main()

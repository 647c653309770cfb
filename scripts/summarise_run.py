"""Write the figures the README quotes from one `offramp run` into a small committed JSON.

    python scripts/summarise_run.py runs/smollm2-banking77-cpu scripts/results/offramp_run_default_cpu.json

The run's own report.json is ~1 MB (every query's answer); this keeps the verdict, the stage times, each system's
accuracy with its interval and the cost figures, each as the report gives it, with the machine it ran on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def stage_hardware(run_dir: Path) -> dict | None:
    """The machine in full (CPU flags, memory, platform) from the run's finetune report; report.json names it in
    words only."""
    for path in sorted(run_dir.glob("finetune-*/**/finetune_report.json")):
        return json.loads(path.read_text())["hardware"]
    return None


def bench_points(run_dir: Path) -> dict[str, list[dict]]:
    """Each benchmarked model's load levels (requests/s, p99 latencies, SLO met); report.json keeps only the
    level each candidate is priced at."""
    points = {}
    for path in sorted(run_dir.glob("bench-*/**/bench_report.json")):
        bench = json.loads(path.read_text())
        points[bench["model"]] = [
            {
                "concurrency": p["concurrency"],
                "requests_per_s": p["requests_per_s"],
                "p99_ttft_ms": p["ttft_ms"]["p99"] if p.get("ttft_ms") else None,
                "p99_tpot_ms": p["tpot_ms"]["p99"] if p.get("tpot_ms") else None,
                "p99_e2el_ms": p["e2el_ms"]["p99"] if p.get("e2el_ms") else None,
                "meets_slo": p["meets_slo"],
                "slo": bench["slo"],
            }
            for p in bench["points"]
        ]
    return points


def summarise(run_dir: Path) -> dict:
    report = json.loads((run_dir / "report.json").read_text())
    ev, be = report.get("eval") or {}, report.get("breakeven") or {}
    return {
        "source": f"measured: offramp run, {run_dir}",
        "created_at": report["created_at"],
        "hardware": report["hardware"],
        "hardware_info": stage_hardware(run_dir),
        "config": report["config"]["name"],
        "verdict": report["verdict"],
        "stage_seconds": {s["name"]: s["seconds"] for s in report["stages"]},
        "stage_seconds_when_run": json.loads((run_dir / "timings.json").read_text()),
        "quality": {
            s["name"]: {"source": s["source"], "mode": s.get("mode"), "accuracy": s["accuracy"]}
            for s in ev.get("systems", [])
        },
        "gate": ev.get("gate"),
        "api_prompt": (be.get("api") or {}).get("prompt"),
        "cost_summary": be.get("summary"),
        "break_even": be.get("break_even"),
        "assumptions": be.get("assumptions"),
        "cascade": {k: (report.get("cascade") or {}).get(k) for k in ("escalation_share", "on_test", "all_api_test")},
        "candidates": report.get("candidates"),  # the LM head and the classifier head side by side
        "bench_points": bench_points(run_dir),
        "classifier_quality": {
            s["name"]: {"source": s["source"], "mode": s.get("mode"), "accuracy": s["accuracy"]}
            for s in ((report.get("classifier") or {}).get("eval") or {}).get("systems", [])
        },
        "classifier_break_even": ((report.get("classifier") or {}).get("breakeven") or {}).get("break_even"),
    }


if __name__ == "__main__":
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summarise(run), indent=2) + "\n")
    print(f"wrote {out}")

"""The classifier head at the full budget (issue 19.6): one pass over all 10,003 Banking77 training rows, scored on
all 3,080 test queries, written as JSON beside the LM head's `full` result (finetune/results/banking77_full_cpu.json).

1. `offramp data prepare banking77` with every row (short system prompt, as the LM head's full run);
2. `offramp finetune --head classify` with the classify recipe and `max_steps=null` (one epoch: 626 steps x 16);
3. `offramp serve` of the merged classifier (vLLM's pooling runner behind the chat face) and `offramp eval` of it
   on the whole test split, free answers (the label the head's argmax gives).

Run it alone on the box: `.venv/bin/python scripts/classifier_full.py` (~35 min on 2 cores; `--work DIR` keeps the
steps' outputs and skips those already done).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_classifier import MODEL, ROOT, offramp, served

from offramp.hardware import hardware_info
from offramp.paths import write_json
from offramp.reports import now_iso

FINETUNE_KEYS = ("recipe", "hyperparameters", "steps", "epochs", "examples_seen", "wall_time_s", "final_train_loss",
                 "train_loss_mean")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "finetune" / "results" / "banking77_classifier_full_cpu.json")
    ap.add_argument("--work", type=Path, default=None, help="keep the intermediate artifacts here")
    args = ap.parse_args()
    w = args.work or Path(tempfile.mkdtemp(prefix="offramp-classifier-full-"))
    w.mkdir(parents=True, exist_ok=True)
    log = w / "log.txt"
    if not (w / "data" / "labels.json").is_file():
        offramp("data", "prepare", "banking77", "--out", str(w / "data"), "--seed", "0", "--prompt-style", "short",
                log=log)  # fmt: skip
    if not (w / "cls" / "finetune_report.json").is_file():
        offramp("finetune", MODEL, "--data", str(w / "data" / "train.jsonl"), "--head", "classify",
                "--out", str(w / "cls"), "max_steps=null", log=log)  # fmt: skip
    if not (w / "eval" / "eval_report.json").is_file():
        with served(str(w / "cls" / "merged"), log) as url:
            offramp("eval", "--task", "banking77", "--seed", "0",
                    "--system", f"classifier={url}/v1+model=classifier+answers=free", "--no-baseline",
                    "--out", str(w / "eval"), log=log)  # fmt: skip
    ft = json.loads((w / "cls" / "finetune_report.json").read_text())
    ev = json.loads((w / "eval" / "eval_report.json").read_text())
    system = next(s for s in ev["systems"] if s["name"] == "classifier")
    body = {
        "benchmark": "banking77-classifier-full",
        "created_at": now_iso(),
        "source": "measured here by scripts/classifier_full.py",
        "hardware": hardware_info(),
        "model": f"{MODEL} + LoRA r16 all-linear + score head (classify recipe, max_steps=null: one epoch)",
        "train_rows": ft["data"]["train"]["examples"],
        "test_queries": ev["n_queries"],
        "finetune": {k: ft[k] for k in FINETUNE_KEYS},
        "accuracy": system["accuracy"],
        "macro_f1": system.get("macro_f1"),
        "scorer": "the chat face's label: argmax of vLLM's /classify probabilities (pooling runner)",
        "work_dir": str(w),
    }
    write_json(args.out, body)
    print(f"classifier head, full budget: {system['accuracy']} on the test split; wrote {args.out}")


if __name__ == "__main__":
    main()

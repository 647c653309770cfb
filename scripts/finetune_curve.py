"""Learning curve of a fine-tuning recipe: accuracy on held-out queries vs training examples seen.

Two phases, each meant to run under `flock /tmp/offramp-heavy.lock` and within ~10 minutes on 2 CPU cores:

  train: fine-tune with a recipe, saving adapter snapshots at the given steps (and the final adapter + report);
  eval:  score every snapshot with constrained answers (label-trie-argmax, offramp.evals.scorers)
         and the final one also with free generation; write the curve JSON.

  python scripts/finetune_curve.py train --model smollm2-135m-instruct --data /tmp/ft/data20 --run /tmp/ft/runA \\
      --snapshot-steps 25,50,75
  python scripts/finetune_curve.py eval --run /tmp/ft/runA --data /tmp/ft/data20 --curve-queries 77 \\
      --json results/finetune_curve.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from transformers import TrainerCallback

from offramp.data import load_chat_jsonl, load_labels
from offramp.hardware import accelerator, hardware_info
from offramp.paths import read_json, write_json
from offramp.store import resolve_model


class Snapshots(TrainerCallback):
    def __init__(self, steps: set[int], dest: Path) -> None:
        self.steps, self.dest = steps, dest

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if state.global_step in self.steps and state.is_world_process_zero:
            model.save_pretrained(self.dest / f"step-{state.global_step:05d}")


def train(a: argparse.Namespace) -> None:
    from offramp.finetune.recipe import load_recipe
    from offramp.finetune.train import RunInputs, run_finetune

    overrides = {"max_steps": a.max_steps, "epochs": a.epochs, "lr": a.lr, "batch_size": a.batch_size}
    recipe = load_recipe(a.recipe, accelerator(), overrides)  # None: not given, the recipe's value stays
    run = Path(a.run)
    steps = {int(s) for s in a.snapshot_steps.split(",") if s}
    inputs = RunInputs(
        model_ref=a.model,
        model_path=resolve_model(a.model),
        data=Path(a.data) / "train.jsonl",
        eval_data=None,
        recipe=recipe,
        out=run / "final",
    )
    report = run_finetune(inputs, accelerator(), [Snapshots(steps, run / "snapshots")])
    print(json.dumps({k: report[k] for k in ("steps", "wall_time_s", "train_tokens_per_s", "final_train_loss")}))
    if not a.no_eval:  # in the same heavy-lock slot as the training
        a.json = a.json or str(run / "curve.json")
        evaluate(a)


def evaluate(a: argparse.Namespace) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offramp.evals.scorers import classification_accuracy

    run = Path(a.run)
    report = read_json(run / "final" / "finetune_report.json")
    hp = report["hyperparameters"]
    per_step = hp["batch_size"] * hp["grad_accum"]
    labels = load_labels(Path(a.data))
    test = load_chat_jsonl(Path(a.data) / "test.jsonl")
    # A per-label-stratified subset for the intermediate points: the first occurrence of each label, and so on.
    subset = sorted(test, key=lambda r: [x["content"] for x in r["messages"]][-1])[
        :: max(1, len(test) // a.curve_queries)
    ]
    tok = AutoTokenizer.from_pretrained(report["base_model_path"])
    points = []
    snaps = sorted((run / "snapshots").glob("step-*")) if (run / "snapshots").is_dir() and not a.final_only else []
    for snap in [*snaps, run / "final" / "adapter"]:
        final = snap.name == "adapter"
        step = report["steps"] if final else int(snap.name.split("-")[1])
        queries = subset if not final or a.final_subset else test
        base = AutoModelForCausalLM.from_pretrained(report["base_model_path"], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, snap).merge_and_unload().eval()
        t0 = time.perf_counter()
        acc = classification_accuracy(model, tok, queries, labels, free=final)
        points.append(
            {"step": step, "examples_seen": step * per_step, "eval_seconds": round(time.perf_counter() - t0, 1), **acc}
        )
        print(json.dumps(points[-1]), flush=True)
    out = {
        "what": "accuracy on held-out Banking77 queries vs training examples seen",
        "source": "measured",
        "hardware": hardware_info(),
        "data": str(a.data),
        "recipe": report["recipe"],
        "hyperparameters": hp,
        "train_rows": report["data"]["train"]["examples"],
        "train_wall_time_s": report["wall_time_s"],
        "train_tokens_per_s": report["train_tokens_per_s"],
        "final_train_loss": report["final_train_loss"],
        "scoring": "constrained = label-trie-argmax: argmax of label log-likelihood over the 77 labels; "
        "free = free-greedy-exact-match (each point's `scorer` names it, offramp.evals.scorers)",
        "points": points,
    }
    write_json(Path(a.json), out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="phase", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", default="smollm2-135m-instruct")
    t.add_argument("--data", required=True)
    t.add_argument("--run", required=True)
    t.add_argument("--recipe", default="default")
    t.add_argument("--snapshot-steps", default="")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--epochs", type=float)
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--no-eval", action="store_true", help="train only (default: then run the eval phase)")
    t.add_argument("--curve-queries", type=int, default=77)
    t.add_argument("--json", help="curve JSON (default: RUN/curve.json)")
    t.add_argument("--final-only", action="store_true")
    t.add_argument("--final-subset", action="store_true")
    e = sub.add_parser("eval")
    e.add_argument("--run", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--curve-queries", type=int, default=77)
    e.add_argument("--json", required=True)
    e.add_argument("--final-only", action="store_true", help="skip the snapshots")
    e.add_argument("--final-subset", action="store_true", help="score the final adapter on the subset too")
    a = p.parse_args()
    if a.phase == "train":
        train(a)
    else:
        evaluate(a)


if __name__ == "__main__":
    main()

"""Turn per-query answers into eval_report.json and the terminal table."""

from __future__ import annotations

from typing import Any

from offramp.evals.cited import METRIC_AS, for_task
from offramp.evals.gate import Gate, verdict
from offramp.evals.metrics import BOOTSTRAP_ITERS, agreement, paired_difference, per_label_errors, score
from offramp.evals.run import Answers
from offramp.evals.specs import CitedSystem, EndpointSystem, System
from offramp.evals.tasks import EvalTask

from offramp.errors import OfframpError
from offramp.hardware import hardware_info


def headline_mode(answers: Answers) -> str:
    """Score a system as it would be served: constrained to the label set wherever the system can be."""
    return "constrained" if "constrained" in answers.preds else "free"


def api_cost(system: EndpointSystem, model: str, usage: dict, n_queries: int) -> dict:
    """Dollars at the dated list price (offramp/prices.yaml via offramp.cost); none for self-hosted servers."""
    if system.provider == "vllm":
        return {"source": "none", "note": "self-hosted endpoint: no list price; its cost comes from offramp bench"}
    from offramp.cost.prices import load_catalogue

    try:
        price = load_catalogue().api_price(model)
    except OfframpError as e:
        return {"source": "none", "note": str(e)}
    per_tok_in, per_tok_out = price.input_per_1m / 1e6, price.output_per_1m / 1e6
    spent = usage["fresh_input_tokens"] * per_tok_in + usage["fresh_output_tokens"] * per_tok_out
    full = usage["input_tokens"] * per_tok_in + usage["output_tokens"] * per_tok_out
    return {
        "source": "list_price",
        "date": price.date,
        "reference": price.source,
        "verified": price.verified,
        "input_per_1m": price.input_per_1m,
        "output_per_1m": price.output_per_1m,
        "spent_usd": round(spent, 9),  # this run's fresh requests only; cache hits cost nothing
        "eval_usd": round(full, 9),  # every request of this eval, as if none were cached
        "per_1k_queries_usd": round(full / n_queries * 1000, 9) if n_queries else None,
    }


def measured_result(system: System, answers: Answers, task: EvalTask, gold: list[int], seed: int) -> dict:
    modes = {}
    for mode, preds in answers.preds.items():
        modes[mode] = {
            **score(gold, preds, len(task.labels), seed=seed),
            "per_label_errors": per_label_errors(gold, preds, task.labels),
        }
    head = headline_mode(answers)
    for row, g in zip(answers.queries, gold, strict=True):
        for mode in answers.preds:
            row[mode]["correct"] = row[mode]["label"] == task.labels[g]
    result: dict[str, Any] = {
        "name": system.name,
        "spec": system.spec,
        "source": "measured",
        "model": answers.model,
        "mode": head,
        "accuracy": modes[head]["accuracy"],
        "macro_f1": modes[head]["macro_f1"],
        "invalid_rate": modes[head]["invalid_rate"],
        "modes": modes,
        "wall_s": {"value": round(answers.wall_s, 2), "unit": "s", "source": "measured", "hardware": hardware_info()},
        "notes": answers.notes,
        "queries": answers.queries,
    }
    if answers.usage is not None:
        result["usage"] = answers.usage
    if isinstance(system, EndpointSystem) and answers.usage is not None:
        result["cost"] = api_cost(system, answers.model, answers.usage, len(gold))
    return result


def cited_result(system: CitedSystem, task: EvalTask) -> dict:
    c = for_task(system.key, task.name)
    point = {"value": c.value, "ci_low": c.value, "ci_high": c.value}
    return {
        "name": system.name,
        "spec": system.spec,
        "source": "cited",
        "model": f"{c.model} ({c.setting})",
        "mode": None,
        "accuracy": point,  # micro-F1 of single-label classification is accuracy
        "macro_f1": None,
        "invalid_rate": None,
        "reference": c.reference,
        "notes": [
            f"cited, not measured: {c.metric} {c.value} on the full {c.task} test set, stands for "
            f"{METRIC_AS.get(c.metric, c.metric)}; no interval (the paper gives none) and no per-query answers",
        ],
    }


def build_body(
    task: EvalTask,
    systems: list[System],
    answers: dict[str, Answers],
    *,
    gate: Gate | None,
    candidate: str,
    baseline: str | None,
    seed: int,
) -> dict:
    gold = [task.labels.index(q.label) for q in task.queries]
    results = {
        s.name: cited_result(s, task)
        if isinstance(s, CitedSystem)
        else measured_result(s, answers[s.name], task, gold, seed)
        for s in systems
    }
    diff = None
    if baseline and baseline in answers and candidate in answers:
        cand_preds = answers[candidate].preds[headline_mode(answers[candidate])]
        base_preds = answers[baseline].preds[headline_mode(answers[baseline])]
        diff = paired_difference(gold, cand_preds, base_preds, seed=seed)
        for name, other in ((candidate, base_preds), (baseline, cand_preds)):
            results[name]["agreement_with_baseline" if name == candidate else "agreement_with_candidate"] = agreement(
                answers[name].preds[headline_mode(answers[name])], other
            )
        results[candidate]["difference_vs_baseline"] = diff
    if gate is None:
        gate_out: dict[str, Any] = {"expression": None, "verdict": None, "reason": "no --gate given"}
    else:
        base_res = results[baseline] if baseline else None
        if base_res is not None and gate.relative and base_res.get(gate.metric) is None:
            raise OfframpError(
                f"gate {gate.expression!r}: the baseline {baseline!r} has no {gate.metric} (cited scores give accuracy)"
            )
        gate_out = verdict(gate, results[candidate], base_res, diff)
    return {
        "task": task.name,
        "task_source": task.source,
        "n_queries": len(task.queries),
        "labels": task.labels,
        "unit": "percent",
        "bootstrap": {
            "iters": BOOTSTRAP_ITERS,
            "seed": seed,
            "method": "percentile, queries resampled with replacement",
        },
        "candidate": candidate,
        "baseline": baseline,
        "systems": list(results.values()),
        "gate": gate_out,
        "queries": [{"id": q.id, "gold": q.label, "text": q.messages[-1]["content"]} for q in task.queries],
    }


def _ci(x: dict | None) -> str:
    if x is None:
        return "—"
    if x["ci_low"] == x["ci_high"] == x["value"]:
        return f"{x['value']:.1f}"
    return f"{x['value']:.1f} [{x['ci_low']:.1f}, {x['ci_high']:.1f}]"


def print_table(body: dict, out_path: str) -> None:
    from rich.console import Console
    from rich.table import Table

    size = f"{body['n_queries']} queries, {len(body['labels'])} labels"
    table = Table(title=f"offramp eval: {body['task']} ({size}; % with 95 % CI)")
    for col in (
        "system",
        "source",
        "mode",
        "accuracy",
        "macro-F1",
        "free acc",
        "invalid free",
        "agree",
        "$ spent",
        "wall s",
    ):
        table.add_column(col, justify="left" if col in ("system", "source", "mode") else "right")
    for s in body["systems"]:
        free = (s.get("modes") or {}).get("free")
        cost = s.get("cost") or {}
        table.add_row(
            s["name"]
            + (
                " (candidate)"
                if s["name"] == body["candidate"]
                else " (baseline)"
                if s["name"] == body["baseline"]
                else ""
            ),
            s["source"],
            s.get("mode") or "—",
            _ci(s["accuracy"]),
            _ci(s.get("macro_f1")),
            _ci(free["accuracy"]) if free else "—",
            f"{free['invalid_rate']:.1f}" if free else "—",
            f"{s['agreement_with_baseline']:.1f}" if "agreement_with_baseline" in s else "—",
            f"{cost['spent_usd']:.4f}" if "spent_usd" in cost else "—",
            f"{s['wall_s']['value']:.1f}" if "wall_s" in s else "—",
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and CI: do not squeeze the table into 80 columns
    console.print(table)
    g = body["gate"]
    if g.get("verdict"):
        color = "green" if g["verdict"] == "GO" else "red"
        console.print(f"[bold {color}]{g['verdict']}[/] ({g['expression']}): {g['reason']}")
    console.print(f"report: {out_path}")

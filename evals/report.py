"""Turn per-query answers into eval_report.json and the terminal table."""

from __future__ import annotations

from typing import Any

from offramp.cited import METRIC_AS, for_task
from offramp.errors import OfframpError
from offramp.evals.gate import verdict
from offramp.evals.metrics import (
    BOOTSTRAP_ITERS,
    CORPUS_METRICS,
    agreement,
    paired_difference,
    paired_generation_difference,
    per_label_errors,
    score,
    score_generation,
    sentence_scores,
    text_agreement,
)
from offramp.evals.run import Answers
from offramp.evals.tasks import EvalTask
from offramp.expressions import Gate
from offramp.hardware import hardware_info
from offramp.systems import CitedSystem, EndpointSystem, System


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
            "scorer": answers.scorers.get(mode),
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
        "scorer": modes[head]["scorer"],
        "accuracy": modes[head]["accuracy"],
        "macro_f1": modes[head]["macro_f1"],
        "invalid_rate": modes[head]["invalid_rate"],
        "modes": modes,
        "notes": answers.notes,
    }
    return _with_measurement(result, system, answers, len(gold))


def _with_measurement(result: dict, system: System, answers: Answers, n_queries: int) -> dict:
    """What every measured system's result carries: its wall time (with the hardware), per-query rows, and for
    an endpoint the tokens it used and what they cost."""
    wall = {"value": round(answers.wall_s, 2), "unit": "s", "source": "measured", "hardware": hardware_info()}
    result |= {"wall_s": wall, "queries": answers.queries}
    if answers.usage is not None:
        result["usage"] = answers.usage
    if isinstance(system, EndpointSystem) and answers.usage is not None:
        result["cost"] = api_cost(system, answers.model, answers.usage, n_queries)
    return result


def generation_result(system: System, answers: Answers, task: EvalTask, seed: int) -> dict:
    """A generation task: the chosen metric and normalised exact match with bootstrap intervals, per-query scores.
    `accuracy` (the contract's required field) is the exact-match rate, the one metric every task kind has."""
    metric = task.metric or "chrf"
    refs = [q.reference for q in task.queries]
    texts = answers.texts["free"]
    scored = score_generation(metric, texts, refs, seed=seed)
    per_query = sentence_scores(metric, texts, refs)
    exact = sentence_scores("exact_match", texts, refs)
    for row, value, em in zip(answers.queries, per_query, exact, strict=True):
        row["free"]["score"] = value
        row["free"]["exact_match"] = em == 100.0
    notes = list(answers.notes)
    if metric in CORPUS_METRICS:
        notes.append(
            f"{metric} is corpus-level (lm-eval's aggregation, sacrebleu defaults); its interval recomputes the "
            "corpus score on each resample; per-query `score` is the sentence-level variant"
        )
    if metric == "bleu" and sorted(len(r.split()) for r in refs)[len(refs) // 2] < 4:
        notes.append("most references are shorter than 4 words: corpus BLEU (4-grams) is near 0; chrf suits them")
    metrics = {name: scored[name] for name in (metric, "exact_match")}
    result: dict[str, Any] = {
        "name": system.name,
        "spec": system.spec,
        "source": "measured",
        "model": answers.model,
        "mode": "free",
        "metric": metric,
        **metrics,
        "metrics": metrics,
        "accuracy": scored["exact_match"],
        "macro_f1": None,
        "invalid_rate": None,
        "empty_rate": scored["empty_rate"],
        "notes": notes,
    }
    return _with_measurement(result, system, answers, len(refs))


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
        **(
            {"cited_cost": {"usd": c.cost_usd, "queries": c.cost_queries, "reference": c.cost_reference}}
            if c.cost_usd is not None
            else {}
        ),
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
    if task.kind == "generation":
        results, diff = _generation_results(task, systems, answers, candidate=candidate, baseline=baseline, seed=seed)
        return _body(task, results, diff, gate=gate, candidate=candidate, baseline=baseline, seed=seed)
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
        diff = {**diff, "metric": "accuracy"}
        results[candidate]["difference_vs_baseline"] = diff
    return _body(task, results, diff, gate=gate, candidate=candidate, baseline=baseline, seed=seed)


def _generation_results(
    task: EvalTask,
    systems: list[System],
    answers: dict[str, Answers],
    *,
    candidate: str,
    baseline: str | None,
    seed: int,
) -> tuple[dict[str, dict], dict | None]:
    metric = task.metric or "chrf"
    results = {s.name: generation_result(s, answers[s.name], task, seed) for s in systems}
    diff = None
    if baseline and baseline in answers and candidate in answers:
        refs = [q.reference for q in task.queries]
        cand, base = answers[candidate].texts["free"], answers[baseline].texts["free"]
        diff = {**paired_generation_difference(metric, cand, base, refs, seed=seed), "metric": metric}
        results[candidate]["difference_vs_baseline"] = diff
        results[candidate]["agreement_with_baseline"] = results[baseline]["agreement_with_candidate"] = text_agreement(
            cand, base
        )
    return results, diff


def _body(
    task: EvalTask,
    results: dict[str, dict],
    diff: dict | None,
    *,
    gate: Gate | None,
    candidate: str,
    baseline: str | None,
    seed: int,
) -> dict:
    if gate is None:
        gate_out: dict[str, Any] = {"expression": None, "verdict": None, "reason": "no --gate given"}
    else:
        base_res = results[baseline] if baseline else None
        if base_res is not None and gate.relative and base_res.get(gate.metric) is None:
            raise OfframpError(
                f"gate {gate.expression!r}: the baseline {baseline!r} has no {gate.metric} (cited scores give accuracy)"
            )
        gate_out = verdict(gate, results[candidate], base_res, diff)
    generation = task.kind == "generation"
    return {
        "task": task.name,
        "task_source": task.source,
        "task_type": task.kind,
        "metric": task.metric if generation else None,
        "n_queries": len(task.queries),
        "labels": task.labels,
        "unit": "percent" if not generation else "points (0-100)",
        "bootstrap": {
            "iters": BOOTSTRAP_ITERS,
            "seed": seed,
            "method": "percentile, queries resampled with replacement",
        },
        "candidate": candidate,
        "baseline": baseline,
        "systems": list(results.values()),
        "gate": gate_out,
        "queries": [
            {"id": q.id, "reference" if generation else "gold": q.label, "text": q.messages[-1]["content"]}
            for q in task.queries
        ],
    }


def _ci(x: dict | None) -> str:
    if x is None:
        return "—"
    if x["ci_low"] == x["ci_high"] == x["value"]:
        return f"{x['value']:.1f}"
    return f"{x['value']:.1f} [{x['ci_low']:.1f}, {x['ci_high']:.1f}]"


def print_table(body: dict, out_path: str) -> None:
    from rich.table import Table

    if body.get("task_type") == "generation":
        return _print_generation_table(body, out_path)
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
            _role(s["name"], body),
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
    _print_footer(table, body, out_path)


def _role(name: str, body: dict) -> str:
    return name + (" (candidate)" if name == body["candidate"] else " (baseline)" if name == body["baseline"] else "")


def _print_generation_table(body: dict, out_path: str) -> None:
    from rich.table import Table

    metric = body["metric"]
    table = Table(title=f"offramp eval: {body['task']} (generation, {body['n_queries']} queries; 0-100 with 95 % CI)")
    cols = ["system", "source", metric, *(["exact match"] if metric != "exact_match" else []), "empty %"]
    for col in (*cols, "vs baseline", "agree", "$ spent", "wall s"):
        table.add_column(col, justify="left" if col in ("system", "source") else "right")
    for s in body["systems"]:
        cost, diff = s.get("cost") or {}, s.get("difference_vs_baseline")
        table.add_row(
            _role(s["name"], body),
            s["source"],
            _ci(s.get(metric)),
            *([_ci(s.get("exact_match"))] if metric != "exact_match" else []),
            f"{s['empty_rate']:.1f}" if s.get("empty_rate") is not None else "—",
            f"{diff['value']:+.1f} [{diff['ci_low']:+.1f}, {diff['ci_high']:+.1f}]" if diff else "—",
            f"{s['agreement_with_baseline']:.1f}" if "agreement_with_baseline" in s else "—",
            f"{cost['spent_usd']:.4f}" if "spent_usd" in cost else "—",
            f"{s['wall_s']['value']:.1f}" if "wall_s" in s else "—",
        )
    _print_footer(table, body, out_path)


def _print_footer(table, body: dict, out_path: str) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # logs and CI: do not squeeze the table into 80 columns
    console.print(table)
    g = body["gate"]
    if g.get("verdict"):
        color = "green" if g["verdict"] == "GO" else "red"
        console.print(f"[bold {color}]{g['verdict']}[/] ({g['expression']}): {g['reason']}")
    console.print(f"report: {out_path}")

"""`offramp cascade`: the offline cascade curve from an eval report and a break-even report.

The candidate's per-answer confidence comes from the eval report (P(label | prompt) per query, which lm-eval's
log-likelihood scoring and vLLM's returned logprobs both give); the baseline's answers too when it was measured,
else its cited accuracy stands in (the curve is then labelled estimated). $ per query come from the break-even
report: the self-hosted cost per request at the workload's volume, and the API's list-price cost per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from offramp.errors import OfframpError
from offramp.paths import atomic_dir, check_out, read_json

REPORT = "cascade_report.json"
PLOT = "cascade.png"


def _system(report: dict, name: str, role: str) -> dict:
    for s in report["systems"]:
        if s["name"] == name:
            return s
    names = ", ".join(s["name"] for s in report["systems"])
    raise OfframpError(f"{role} {name!r} is not a system of the eval report ({names})")


def _per_request(breakeven: dict, path: Path) -> tuple[float, float, dict]:
    """The two $ per request of a validated breakeven report (BreakevenReport): self_hosted is None, or its
    value is, when no load level of the bench met the SLO or the host served nothing."""
    hosted = breakeven["self_hosted"]
    local = hosted["cost"]["per_request_usd"]["value"] if hosted else None
    api = breakeven["api"]["cost"]["per_request_usd"]["value"]
    if local is None or api is None:
        raise OfframpError(
            f"{path}: no self-hosted and API cost per request (did a load level of the bench meet the SLO?)"
        )
    source = {
        "local_usd_per_query": {"value": local, "source": "computed", "from": f"self-hosted cost per request, {path}"},
        "api_usd_per_query": {"value": api, "source": "computed", "from": f"API list price per request, {path}"},
    }
    return float(local), float(api), source


def build_inputs(report: dict, candidate: str, baseline: str, local_cost: float, api_cost: float):
    import numpy as np

    from offramp.evals.cascade import CascadeInputs

    if report.get("task_type", "classification") != "classification":
        raise OfframpError("the cascade needs a classification eval report (answers constrained to a label set)")
    labels = report["labels"]
    index = {label: i for i, label in enumerate(labels)}
    gold = np.array([index[q["gold"]] for q in report["queries"]])
    cand = _system(report, candidate, "--candidate")
    if cand.get("source") != "measured":
        raise OfframpError(f"the candidate {candidate!r} is not measured here; the cascade needs its answers")
    mode = cand["mode"]
    rows = [q[mode] for q in cand["queries"]]
    if any(r.get("prob") is None for r in rows):
        raise OfframpError(
            f"candidate {candidate!r} has no per-answer log-probabilities in its {mode} answers "
            "(an endpoint that does not return logprobs cannot be cascaded)"
        )
    pred = np.array([index.get(r["label"], -1) if r["label"] is not None else -1 for r in rows])
    conf = np.clip(np.array([float(r["prob"]) for r in rows]), 0.0, 1.0)
    base = _system(report, baseline, "--baseline")
    if base.get("source") == "cited":
        api_pred, api_acc = None, float(base["accuracy"]["value"])
    else:
        bm = base["mode"]
        api_pred = np.array([index.get(q[bm]["label"], -1) if q[bm]["label"] else -1 for q in base["queries"]])
        api_acc = None
    return CascadeInputs(gold, pred, conf, api_pred, api_acc, local_cost, api_cost)


def plot(result: dict, path: Path, candidate: str, baseline: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["curve_test"]
    x = [100 * (1 - p["local_share"]) for p in pts]
    y = [p["accuracy"] for p in pts]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.fill_between(x, [p["ci_low"] for p in pts], [p["ci_high"] for p in pts], alpha=0.2, step="post")
    ax.step(x, y, where="post", label="cascade (test split)")
    ends = ((result["all_local_test"], f"all {candidate}"), (result["all_api_test"], f"all {baseline}"))
    for p, name in ends:
        ax.plot(100 * (1 - p["local_share"]), p["accuracy"], "s", color="black")
        ax.annotate(f"{name}\n${p['usd_per_1k_queries']:.4g}/1k", (100 * (1 - p["local_share"]), p["accuracy"]),
                    textcoords="offset points", xytext=(4, -24), fontsize=8)  # fmt: skip
    c = result["on_test"]
    ax.plot(100 * (1 - c["local_share"]), c["accuracy"], "o", color="tab:red", label="chosen threshold")
    ax.annotate(f"t={c['threshold']:.3g}: {c['accuracy']:.1f} %\n${c['usd_per_1k_queries']:.4g}/1k",
                (100 * (1 - c["local_share"]), c["accuracy"]), textcoords="offset points", xytext=(6, 6),
                fontsize=8, color="tab:red")  # fmt: skip
    est = " (estimated: cited baseline)" if result["estimated"] else ""
    ax.set(xlabel="share of queries escalated to the API (%)", ylabel="accuracy (%)",
           title=f"Cascade {candidate} → {baseline}{est}")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cascade_command(
    eval_report: Annotated[Path, typer.Option("--eval", help="eval_report.json with the candidate's answers")],
    breakeven: Annotated[Path, typer.Option(help="breakeven_report.json: self-hosted and API cost per request")],
    candidate: Annotated[str | None, typer.Option(help="local system (default: the eval's candidate)")] = None,
    baseline: Annotated[str | None, typer.Option(help="API system (default: the eval's baseline)")] = None,
    target: Annotated[str | None, typer.Option(help="e.g. 'accuracy>=baseline-1' or 'accuracy>=75'")] = None,
    max_escalation: Annotated[float | None, typer.Option(help="escalate at most this share, e.g. 0.3")] = None,
    seed: Annotated[int, typer.Option(help="seed of the calibration / test split and the bootstrap")] = 0,
    out: Annotated[Path, typer.Option(help="output dir for cascade_report.json and cascade.png")] = Path(
        "runs/cascade"
    ),
    force: Annotated[bool, typer.Option(help="replace --out even if offramp did not write it")] = False,
) -> None:
    """Cascade curve: accuracy and $ per 1k queries for each confidence threshold; the threshold meeting the
    target is chosen on a calibration split and reported on a disjoint test split."""
    from offramp.artifacts import load_report
    from offramp.evals.cascade import evaluate
    from offramp.expressions import parse_target
    from offramp.reports import write_report

    parse_target(target, max_escalation)  # bad targets fail before any file is read
    check_out(out, force=force)
    for path in (eval_report, breakeven):
        if not path.is_file():
            raise OfframpError(f"{path}: no such file")
    report, be = read_json(eval_report), load_report(breakeven, "breakeven").model_dump()
    cand = candidate or report.get("candidate")
    base = baseline or report.get("baseline")
    if not cand or not base:
        raise OfframpError("name the --candidate and the --baseline (the eval report names no pair)")
    local_cost, api_cost, cost_source = _per_request(be, breakeven)
    result: dict[str, Any] = evaluate(
        build_inputs(report, cand, base, local_cost, api_cost), target=target, max_escalation=max_escalation, seed=seed
    )
    chosen = result["on_test"]
    result.update(
        candidate=cand,
        baseline=base,
        task=report.get("task"),
        eval_report=str(eval_report),
        breakeven_report=str(breakeven),
        costs=cost_source,
        cost_rule=(
            "the local model answers every query; escalated queries are also paid at "
            f"{be['api']['name']}'s price (breakeven report)"
            + ("" if base == be["api"]["name"] else f", whatever answers them here ({base})")
        ),
        escalation_share=round(1 - chosen["local_share"], 4),
        unit="percent",
    )
    with atomic_dir(out, overwrite=True, force=force) as tmp:
        plot(result, tmp / PLOT, cand, base)
        result["plot"] = PLOT
        write_report(tmp / REPORT, "cascade", result)
    est = " (estimated from the cited score)" if result["estimated"] else ""
    typer.echo(
        f"cascade {cand} → {base}{est}: threshold {chosen['threshold']:.4g} keeps {chosen['local_share']:.0%} local; "
        f"accuracy {chosen['accuracy']:.1f} % [{chosen['ci_low']:.1f}, {chosen['ci_high']:.1f}] on the test split vs "
        f"{result['all_api_test']['accuracy']:.1f} % all-API; ${chosen['usd_per_1k_queries']:.4g} vs "
        f"${result['all_api_test']['usd_per_1k_queries']:.4g} per 1k queries → {out / REPORT}"
    )


def register(app: typer.Typer) -> None:
    app.command("cascade")(cascade_command)

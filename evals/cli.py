"""`offramp eval`: candidate vs API baseline on the user's task, with confidence intervals and a go/no-go gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from offramp.errors import OfframpError

SYSTEM_HELP = (
    "NAME=SPEC, repeatable. SPEC: a local checkpoint (store name or path, +adapter=DIR); openai:MODEL or "
    "anthropic:MODEL (key from OPENAI_API_KEY / ANTHROPIC_API_KEY); http://host:port/v1 (vLLM; +model=NAME, "
    "+key_env=VAR); cited:banking77/gpt-4-1shot (a published score)"
)


def eval_command(
    task: Annotated[
        str,
        typer.Option(help="banking77, or a chat JSONL whose final assistant turns are the labels (or references)"),
    ],
    system: Annotated[list[str], typer.Option("--system", help=SYSTEM_HELP)],
    task_type: Annotated[
        str,
        typer.Option(
            help="classification (final turns are labels) or generation (free-text references scored by --metric)"
        ),
    ] = "classification",
    metric: Annotated[
        str | None,
        typer.Option(help="generation tasks: chrf (default), bleu, rougeL or exact_match (normalised)"),
    ] = None,
    max_gen_toks: Annotated[
        int | None, typer.Option(help="new tokens per free answer (default: from the longest label / reference)")
    ] = None,
    limit_per_label: Annotated[int | None, typer.Option(help="evaluate on at most N queries per label")] = None,
    gate: Annotated[
        str | None,
        typer.Option(help="e.g. 'accuracy>=baseline-2', 'macro_f1>70' or 'chrf>=baseline-2' (points of 0-100)"),
    ] = None,
    candidate: Annotated[str | None, typer.Option(help="system the gate judges (default: the first)")] = None,
    baseline: Annotated[str | None, typer.Option(help="system it is compared with (default: the last)")] = None,
    no_baseline: Annotated[
        bool, typer.Option("--no-baseline", help="compare with none: measure the systems, gate only absolutely")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="output dir for eval_report.json (default: runs/eval-<task>)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the query subset and the bootstrap")] = 0,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache", help="paid APIs' reply cache (default: $OFFRAMP_HOME/api-cache); URL endpoints are never cached"
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="neither read nor write the API reply cache")] = False,
    batch_size: Annotated[int, typer.Option(help="batch size of local models")] = 8,
    max_attempts: Annotated[int, typer.Option(help="attempts per API request (backoff on 429/5xx)")] = 6,
    concurrency: Annotated[int, typer.Option(help="requests in flight per endpoint system")] = 8,
) -> None:
    """Evaluate systems on a task through lm-eval, with 95 % CIs, tokens and $ at list price, and a GO / NO-GO
    gate. Classification: free and label-constrained answers, accuracy, macro-F1, per-label errors. Generation:
    free answers scored against the references by --metric."""
    from offramp.envs import require_env
    from offramp.evals.tasks import load_task
    from offramp.expressions import parse_gate
    from offramp.systems import parse_systems

    parsed_gate = parse_gate(gate) if gate is not None else None
    systems = parse_systems(system)
    eval_task = load_task(
        task, per_label=limit_per_label, seed=seed, kind=task_type, metric=metric, max_gen_toks=max_gen_toks
    )
    _check_systems_fit_the_task(systems, eval_task, parsed_gate)
    cand, base = _roles(systems, candidate, baseline, no_baseline)
    if parsed_gate is not None and parsed_gate.relative and base is None:
        raise OfframpError(f"gate {gate!r} compares with the baseline: give a second --system")
    if max_attempts < 1 or batch_size < 1 or concurrency < 1:
        raise OfframpError("--max-attempts, --batch-size and --concurrency must be at least 1")
    require_env("runtime")
    from offramp.evals.cli_run import run_eval

    run_eval(
        eval_task,
        systems,
        gate=parsed_gate,
        candidate=cand,
        baseline=base,
        out=out or Path("runs") / f"eval-{eval_task.name}",
        seed=seed,
        cache_dir=None if no_cache else cache_dir,
        use_cache=not no_cache,
        batch_size=batch_size,
        max_attempts=max_attempts,
        concurrency=concurrency,
    )


def _check_systems_fit_the_task(systems: list, eval_task: Any, parsed_gate: Any) -> None:
    """The gate's metric exists for this task kind; a cited score exists for this task (and is a classification)."""
    from offramp.cited import for_task
    from offramp.expressions import check_gate_metric
    from offramp.systems import CitedSystem

    if parsed_gate is not None:
        check_gate_metric(parsed_gate, eval_task.kind, eval_task.metric)
    for s in systems:
        if isinstance(s, CitedSystem):
            if eval_task.kind == "generation":
                raise OfframpError(
                    f"system {s.name!r} ({s.spec}): cited scores are published classification accuracies "
                    "(banking77); a generation task needs measured systems"
                )
            for_task(s.key, eval_task.name)


def _roles(systems: list, candidate: str | None, baseline: str | None, no_baseline: bool) -> tuple[str, str | None]:
    """(candidate, baseline): by default the first system and the last (none with one system or --no-baseline)."""
    from offramp.systems import CitedSystem

    names = [s.name for s in systems]
    cand = candidate or names[0]
    if no_baseline and baseline is not None:
        raise OfframpError("--baseline and --no-baseline contradict each other; give one")
    base = baseline if baseline is not None or no_baseline else (names[-1] if len(names) > 1 else None)
    for role, name in (("--candidate", cand), ("--baseline", base)):
        if name is not None and name not in names:
            raise OfframpError(f"{role} {name!r} is not one of the systems ({', '.join(names)})")
    if base == cand:
        raise OfframpError("the candidate and the baseline are the same system; name two systems")
    if isinstance(systems[names.index(cand)], CitedSystem):
        raise OfframpError(f"the candidate {cand!r} is a cited score; the candidate must be measured here")
    return cand, base


def register(app: typer.Typer) -> None:
    from offramp.evals.cascade_cli import register as register_cascade

    app.command("eval")(eval_command)
    register_cascade(app)

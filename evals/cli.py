"""`offramp eval`: candidate vs API baseline on the user's task, with confidence intervals and a go/no-go gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from offramp.errors import OfframpError

SYSTEM_HELP = (
    "NAME=SPEC, repeatable. SPEC: a local checkpoint (store name or path, +adapter=DIR); openai:MODEL or "
    "anthropic:MODEL (key from OPENAI_API_KEY / ANTHROPIC_API_KEY); http://host:port/v1 (vLLM; +model=NAME, "
    "+key_env=VAR); cited:banking77/gpt-4-1shot (a published score)"
)


def eval_command(
    task: Annotated[str, typer.Option(help="banking77, or a chat JSONL whose final assistant turns are the labels")],
    system: Annotated[list[str], typer.Option("--system", help=SYSTEM_HELP)],
    limit_per_label: Annotated[int | None, typer.Option(help="evaluate on at most N queries per label")] = None,
    gate: Annotated[
        str | None, typer.Option(help="e.g. 'accuracy>=baseline-2' or 'macro_f1>70' (percent points)")
    ] = None,
    candidate: Annotated[str | None, typer.Option(help="system the gate judges (default: the first)")] = None,
    baseline: Annotated[str | None, typer.Option(help="system it is compared with (default: the last)")] = None,
    out: Annotated[
        Path | None, typer.Option(help="output dir for eval_report.json (default: runs/eval-<task>)")
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the query subset and the bootstrap")] = 0,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache", help="API reply cache (default: $OFFRAMP_HOME/api-cache)")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="neither read nor write the API reply cache")] = False,
    batch_size: Annotated[int, typer.Option(help="batch size of local models")] = 8,
    max_attempts: Annotated[int, typer.Option(help="attempts per API request (backoff on 429/5xx)")] = 6,
    concurrency: Annotated[int, typer.Option(help="requests in flight per endpoint system")] = 8,
) -> None:
    """Evaluate systems on a classification task through lm-eval; free and label-constrained answers, 95 % CIs,
    per-label errors, tokens and $ at list price, and a GO / NO-GO gate."""
    from offramp.evals.cited import for_task
    from offramp.evals.gate import parse_gate
    from offramp.evals.specs import CitedSystem, parse_systems
    from offramp.evals.tasks import load_task

    parsed_gate = parse_gate(gate) if gate is not None else None
    systems = parse_systems(system)
    eval_task = load_task(task, per_label=limit_per_label, seed=seed)
    for s in systems:
        if isinstance(s, CitedSystem):
            for_task(s.key, eval_task.name)
    names = [s.name for s in systems]
    cand = candidate or names[0]
    base = baseline if baseline is not None else (names[-1] if len(names) > 1 else None)
    for role, name in (("--candidate", cand), ("--baseline", base)):
        if name is not None and name not in names:
            raise OfframpError(f"{role} {name!r} is not one of the systems ({', '.join(names)})")
    if base == cand:
        raise OfframpError("the candidate and the baseline are the same system; name two systems")
    if isinstance(systems[names.index(cand)], CitedSystem):
        raise OfframpError(f"the candidate {cand!r} is a cited score; the candidate must be measured here")
    if parsed_gate is not None and parsed_gate.relative and base is None:
        raise OfframpError(f"gate {gate!r} compares with the baseline: give a second --system")
    if max_attempts < 1 or batch_size < 1 or concurrency < 1:
        raise OfframpError("--max-attempts, --batch-size and --concurrency must be at least 1")

    from offramp.envs import require_env

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


def register(app: typer.Typer) -> None:
    from offramp.evals.cascade_cli import register as register_cascade

    app.command("eval")(eval_command)
    register_cascade(app)

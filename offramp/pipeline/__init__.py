"""`offramp run`: the whole pipeline on one config and the decision report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def run(
    config: Annotated[Path | None, typer.Argument(help="pipeline YAML (default: the embedded CPU default)")] = None,
    runs_dir: Annotated[Path, typer.Option(help="where stage outputs and the report go")] = Path("runs"),
    full: Annotated[bool, typer.Option(help="all training data, the full test set, the full finetune recipe")] = False,
) -> None:
    """Run the pipeline (default: SmolLM2 + Banking77 on CPU) and write report.html + report.json."""
    from offramp.errors import OfframpError
    from offramp.pipeline import report
    from offramp.pipeline.config import load_config
    from offramp.pipeline.runner import Runner, console
    from offramp.pipeline.stages import baseline_gap, build_stages

    cfg = load_config(config)
    if full:
        cfg.task.train_per_label = cfg.task.test_per_label = None
        cfg.finetune.recipe = "full"
        cfg.name += "-full"
    run_dir = runs_dir / cfg.name
    results = Runner(run_dir).execute(build_stages(cfg))
    collected = report.collect(cfg.model_dump(), results, baseline_gap=baseline_gap(cfg))
    out = report.write(run_dir, collected)
    console.print(f"report: {out}")
    bad = [r for r in results if r.status == "failed"]
    if bad:
        raise OfframpError(f"stage {bad[0].name} failed: {bad[0].error} (finished stages kept; report: {out})")
    if problems := collected["problems"]:
        raise OfframpError(f"{problems[0]} (report: {out})")

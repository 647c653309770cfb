import typer

from offramp.placeholder import placeholder


def register(app: typer.Typer) -> None:
    placeholder(app, "quantize", "Quantize a model (NF4, INT8, GPTQ W4A16, W8A8); size and quality loss", 5)

import typer

from offramp.placeholder import placeholder


def register(app: typer.Typer) -> None:
    placeholder(app, "eval", "Evaluate candidates vs the API baseline with confidence intervals and a gate", 7)

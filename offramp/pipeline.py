import typer

from offramp.placeholder import placeholder


def register(app: typer.Typer) -> None:
    placeholder(app, "run", "The whole pipeline on a config (default: SmolLM2 + Banking77) and the decision report", 9)

import typer

from offramp.placeholder import placeholder


def register(app: typer.Typer) -> None:
    placeholder(app, "breakeven", "Self-hosted vs API cost per token and per month, break-even volume", 8)

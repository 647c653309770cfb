"""Commands for stages that are designed but not built yet: they say so and exit 2."""

from __future__ import annotations

import typer

from offramp.errors import NotSupportedHere

UNBUILT: set[str] = set()


def placeholder(app: typer.Typer, name: str, summary: str, issue: int) -> None:
    UNBUILT.add(name)

    @app.command(
        name,
        help=f"{summary} (not built yet: issue #{issue})",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=True,
    )
    def _cmd(ctx: typer.Context) -> None:
        raise NotSupportedHere(f"'offramp {name}' is not built yet (issue #{issue})")

"""`voicepipe serve` command (filled by the serve stage)."""

import typer


def register(app: typer.Typer) -> None:
    """Attach this stage's commands to the top-level CLI."""

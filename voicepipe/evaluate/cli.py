"""`voicepipe evaluate` command (filled by the evaluate stage)."""

import typer


def register(app: typer.Typer) -> None:
    """Attach this stage's commands to the top-level CLI."""

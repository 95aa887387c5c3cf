"""`voicepipe pipeline` and `voicepipe demo` commands."""

import typer


def register(app: typer.Typer) -> None:
    """Attach this stage's commands to the top-level CLI."""

"""`voicepipe pipeline` and `voicepipe demo` commands."""

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach this stage's commands to the top-level CLI."""

    @app.command("audit")
    def audit_cmd(
        target: str = typer.Argument(..., help="A Prefect flow run id, a corpus version, or an object sha256."),
        config: Path | None = typer.Option(None, "--config", help="YAML settings file (store location)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Print what was produced, from what, with which parameters (store lineage + refs + Prefect API)."""
        import json

        from voicepipe.config import load_settings
        from voicepipe.pipeline.audit import audit, render

        report = audit(target, settings=load_settings(config))
        typer.echo(json.dumps(report, indent=2, default=str) if as_json else render(report))

"""`voicepipe pipeline` and `voicepipe demo` commands."""

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach this stage's commands to the top-level CLI."""

    @app.command("demo")
    def demo_cmd(
        out: Path = typer.Option(Path("var/demo"), "--out", help="Where the demo writes everything."),
        episodes: int = typer.Option(3, min=2, help="Synthetic podcast episodes (one is held out)."),
        epochs: int = typer.Option(2, min=1, help="Training epochs of the tiny model."),
    ) -> None:
        """Run the whole pipeline once on a synthetic podcast with tiny models, locally; print where things are."""
        import json

        from voicepipe.pipeline.demo import run_demo

        summary = run_demo(out, episodes=episodes, epochs=epochs)
        typer.echo(json.dumps(summary, indent=2, default=str))
        typer.echo(f"\nartifacts: {summary['store']}\nrun summary: {summary['summary']}")

    @app.command("pipeline")
    def pipeline_cmd(
        params_file: Path = typer.Option(
            ..., "--params", exists=False, help="YAML/JSON of flows.pipeline.PipelineParams (corpus, train, evaluate)."
        ),
    ) -> None:
        """Corpus -> train -> evaluate -> promote, as the Prefect flow voice-pipeline (ephemeral unless
        PREFECT_API_URL points at a server)."""
        import json

        import yaml
        from pydantic import ValidationError

        from flows.pipeline import PipelineParams, voice_pipeline
        from voicepipe.errors import InputError

        try:
            raw = yaml.safe_load(params_file.read_text())
        except OSError as e:
            raise InputError(f"pipeline params {params_file}: unreadable ({e.strerror or e})") from None
        except yaml.YAMLError:
            raise InputError(f"pipeline params {params_file}: not valid YAML/JSON") from None
        try:
            params = PipelineParams.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise InputError(f"pipeline params {params_file}: {where}: {err['msg']}") from None
        typer.echo(json.dumps(voice_pipeline(params), indent=2, default=str))

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

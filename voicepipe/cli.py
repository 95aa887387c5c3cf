"""The `voicepipe` command. Each stage owns its sub-commands in `voicepipe/<stage>/cli.py`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from voicepipe.errors import VoicepipeError

cli = typer.Typer(help="voicepipe: podcast feed -> evaluated, served Qwen3-TTS voice.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect settings.", no_args_is_help=True)
cli.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: Path | None = typer.Option(None, "--config", help="YAML settings file.")) -> None:
    """Print the effective settings (secrets masked)."""
    from voicepipe.config import load_settings, masked

    typer.echo(json.dumps(masked(load_settings(config)), indent=2, default=str))


def _register() -> None:
    """Attach each stage's commands; stages import their heavy dependencies lazily inside commands."""
    from voicepipe.corpus import cli as corpus_cli
    from voicepipe.evaluate import cli as evaluate_cli
    from voicepipe.pipeline import cli as pipeline_cli
    from voicepipe.serve import cli as serve_cli
    from voicepipe.store import cli as store_cli
    from voicepipe.studio import cli as studio_cli
    from voicepipe.train import cli as train_cli

    cli.add_typer(corpus_cli.app, name="corpus")
    train_cli.register(cli)
    evaluate_cli.register(cli)
    serve_cli.register(cli)
    pipeline_cli.register(cli)
    store_cli.register(cli)
    studio_cli.register(cli)


_register()


def app() -> None:
    """Entry point: run the CLI and turn a VoicepipeError into one line on stderr and exit code 2."""
    try:
        cli(standalone_mode=False)
    except VoicepipeError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except Exception as e:  # click usage errors come through here in non-standalone mode
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    app()

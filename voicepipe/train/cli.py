"""`voicepipe train`: fine-tune Qwen3-TTS on a corpus (the recipe in voicepipe/train/recipe.py)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach this stage's commands to the top-level CLI."""

    @app.command("train")
    def train_cmd(
        corpus: str = typer.Option(..., "--corpus", help="Corpus dir, s3://bucket/prefix, or store:<ref-or-sha>."),
        base: str = typer.Option(..., "--base", help="Base model dir (Qwen3-TTS-12Hz Base) or a name resolve_model "
                                 "knows."),
        speaker: str = typer.Option(..., "--speaker", help="Speaker name written into the checkpoints."),
        out: Path = typer.Option(..., "--out", help="Output dir: epoch-NNN/, training.json, loss.png, state/."),
        config: str | None = typer.Option(None, "--config", help="Training YAML (path or a name in "
                                          "voicepipe/train/configs; default v8)."),
        epochs: int | None = typer.Option(None, "--epochs", help="Override the config's epochs."),
        lr: float | None = typer.Option(None, "--lr", help="Override the config's learning rate."),
        resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue a killed run in the same --out."),
        upload: bool = typer.Option(True, "--upload/--no-upload", help="Put kept checkpoints + training.json into "
                                    "the artifact store."),
        settings_file: Path | None = typer.Option(None, "--settings", help="voicepipe settings YAML."),
    ) -> None:
        """Fine-tune with guardrails; multi-GPU: `accelerate launch -m voicepipe.train ...` or torchrun."""
        from voicepipe.config import load_settings
        from voicepipe.train import load_config, train

        settings = load_settings(settings_file)
        cfg = load_config(config, epochs=epochs, lr=lr)
        result = train(corpus, base, speaker, out, cfg, settings=settings, store=settings if upload else None,
                       resume=resume)  # fmt: skip
        for e in result.epochs:
            kept = f"  -> {e['checkpoint']}" if e.get("checkpoint") and not e.get("pruned") else ""
            typer.echo(f"epoch {e['epoch']:3d}  train {e['train_loss']:.4f}  val {e['val_loss']:.4f}{kept}")
        typer.echo(f"{result.status}" + (f" ({result.stop_reason})" if result.stop_reason else "")
                   + f": {result.training_json}")  # fmt: skip
        if result.store:
            typer.echo(f"store: training.json {result.store['training_json']}")

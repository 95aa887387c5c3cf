"""`voicepipe evaluate`: score every checkpoint of a training run, pick the best, promote it to voices/<speaker>."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach this stage's commands to the top-level CLI."""

    @app.command("evaluate")
    def evaluate(
        checkpoints: str = typer.Option(..., "--checkpoints", help="Training output dir (epoch-NNN/ + training.json), "
                                        "s3://bucket/prefix, or a store ref/sha."),
        corpus: str = typer.Option(..., "--corpus", help="Corpus dir (val_with_codes.jsonl …) or store ref/sha."),
        reference: str | None = typer.Option(None, "--reference", help="A reference checkpoint to compare with "
                                             "(e.g. an old run's best epoch); never promoted."),
        speaker: str | None = typer.Option(None, "--speaker", help="Speaker name (default: corpus.json's)."),
        base: str | None = typer.Option(None, "--base", help="Base model for the zero-shot clone floor (default: "
                                        "training.json's base_model)."),
        out: Path | None = typer.Option(None, "--out", help="Output dir (default <home>/eval/<name>-<time>)."),
        asr: str = typer.Option("auto", "--asr", help="whisper | pocketsphinx | auto | a Whisper dir."),
        script: Path | None = typer.Option(None, "--script", help="Evaluation sentences, one per line (default: "
                                           "the package's script.txt)."),
        max_val_texts: int = typer.Option(10, "--max-val-texts", min=0),
        wer_ceiling: float = typer.Option(0.20, "--wer-ceiling"),
        device: str = typer.Option("auto", "--device", help="auto (GPU bf16 when present), cpu, cuda"),
        promote: bool = typer.Option(True, "--promote/--no-promote", help="Promote the selected checkpoint."),
        config: Path | None = typer.Option(None, "--config", help="YAML settings file."),
    ) -> None:
        """Evaluate checkpoints (validity, speaker similarity vs the base model's zero-shot clone, WER/CER, DNSMOS,
        RTF), write report.md/report.html, and promote the best valid one."""
        from voicepipe.config import load_settings
        from voicepipe.errors import InputError
        from voicepipe.evaluate.report import table_rows
        from voicepipe.evaluate.runner import EvalConfig, evaluate_checkpoints, load_script
        from voicepipe.store import open_store

        settings = load_settings(config)
        store = open_store(settings)
        sentences = None
        if script is not None:
            try:
                sentences = load_script(script)
            except OSError as e:
                raise InputError(f"script {script}: unreadable ({e.strerror or e})") from None
        cfg = EvalConfig(script=sentences, asr=asr, max_val_texts=max_val_texts, wer_ceiling=wer_ceiling,
                         device=device)
        result = evaluate_checkpoints(checkpoints, corpus, cfg, reference=reference, base=base, speaker=speaker,
                                      out_dir=out, store=store, settings=settings, promote_best=promote)
        for row in table_rows(result):
            typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))
        sm = result.speaker_model
        typer.echo(f"SIM model: {sm.get('key')}" + (f" — FALLBACK: {sm['fallback']}" if sm.get("fallback") else ""))
        sel = result.selection
        typer.echo(f"selected: {sel.chosen or 'none'} ({'promoted' if result.promoted else 'not promoted'}): "
                   f"{sel.reason}")
        if result.promoted:
            typer.echo(f"voices/{result.speaker} -> {result.promoted['sha']}")
        typer.echo(f"report: {result.report_md}\nhtml:   {result.report_html}")

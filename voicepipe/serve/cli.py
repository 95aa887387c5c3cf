"""`voicepipe serve`: the real-time speech server."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach `voicepipe serve` to the top-level CLI."""

    @app.command("serve")
    def serve(
        voice: list[str] = typer.Option(..., "--voice", help="Voice to load (repeatable): a dir under --voices-dir "
                                        "or the store's voice registry ref voices/NAME."),
        voices_dir: Path | None = typer.Option(None, "--voices-dir", help="Directory of voice checkpoint dirs."),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8000, "--port"),
        api_key: str | None = typer.Option(None, "--api-key", envvar="VOICEPIPE_API_KEY",
                                           help="Require 'Authorization: Bearer KEY' on /v1 routes."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
        store_url: str | None = typer.Option(None, "--store", help="Artifact store URL (default: settings)."),
        max_concurrent: int = typer.Option(8, "--max-concurrent", help="Generation slots per voice."),
        queue_timeout: float = typer.Option(30.0, "--queue-timeout", help="Seconds a request may wait for a slot."),
        max_input_chars: int = typer.Option(4096, "--max-input-chars"),
    ) -> None:
        """Serve voices over an OpenAI-compatible, streaming /v1/audio/speech (local, offline)."""
        import uvicorn

        from voicepipe.errors import ConfigError
        from voicepipe.serve.app import create_app, load_voices
        from voicepipe.serve.deps import ServeConfig

        if voices_dir is not None and not voices_dir.is_dir():
            raise ConfigError(f"--voices-dir {voices_dir}: not a directory")
        cfg = ServeConfig(voices=voice, voices_dir=voices_dir, store_url=store_url, device=device, api_key=api_key,
                          max_concurrent=max_concurrent, queue_timeout_s=queue_timeout,
                          max_input_chars=max_input_chars)  # fmt: skip
        voices = load_voices(cfg)  # fail fast (one-line error) before binding the port
        app = create_app(cfg, voices)
        app.state.vp.owns_engines = True
        uvicorn.run(app, host=host, port=port, log_level="info")

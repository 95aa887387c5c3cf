"""`voicepipe studio`: the recording page for a scripted corpus, served on this machine."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Attach `voicepipe studio` to the top-level CLI."""

    @app.command("studio")
    def studio(
        speaker: str = typer.Option(..., "--speaker", help="Who is recording (their sessions live under this name)."),
        session: str = typer.Option("main", "--session", help="Recording session name (resume it any time)."),
        script: Path | None = typer.Option(None, "--script", help="Text file, one prompt a line, any language "
                                           "(default: the session's script; for a new one the CMU ARCTIC prompts)."),
        language: str | None = typer.Option(None, "--language", help="espeak-ng voice of the script for phonemes "
                                            "(en-us, en-gb, de, fr, es ...); default en-us."),
        target_minutes: float | None = typer.Option(None, "--target-minutes", help="Minutes to aim for (new: 45)."),
        host: str = typer.Option("127.0.0.1", "--host"),
        port: int = typer.Option(8010, "--port"),
        store: str | None = typer.Option(None, "--store", help="Artifact store URL (default: settings)."),
        asr_backend: str = typer.Option("auto", "--asr-backend", help="auto | whisper | pocketsphinx | none."),
        asr_model: str | None = typer.Option(None, "--asr-model", help="Whisper dir or hub id (default: settings)."),
        device: str = typer.Option("cpu", "--device", help="Device for Whisper: cpu, cuda, cuda:N."),
        dnsmos: bool = typer.Option(True, "--dnsmos/--no-dnsmos", help="Score every take with DNSMOS."),
        ssl_certfile: Path | None = typer.Option(None, "--ssl-certfile", help="HTTPS (browsers allow the "
                                                 "microphone only on https or localhost)."),
        ssl_keyfile: Path | None = typer.Option(None, "--ssl-keyfile"),
    ) -> None:
        """Record a scripted voice corpus in the browser, each take checked at once (open the printed URL)."""
        import uvicorn
        from pydantic import ValidationError

        from voicepipe.errors import ConfigError
        from voicepipe.studio.app import create_app
        from voicepipe.studio.deps import Studio, StudioConfig

        try:
            cfg = StudioConfig(speaker=speaker, session=session, script=script, language=language,
                               target_minutes=target_minutes, store_url=store, asr_backend=asr_backend,
                               asr_model=asr_model, device=device, dnsmos=dnsmos)
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError(f"studio: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        studio = Studio(cfg)  # fails fast (one-line error) on a bad script, name or store
        studio.warm_up()
        scheme = "https" if ssl_certfile else "http"
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
        typer.echo(f"studio for {studio.session.speaker}/{studio.session.session} ({len(studio.session.script.prompts)}"
                   f" prompts) in {studio.store.url}\nopen {scheme}://{shown}:{port}/")
        uvicorn.run(create_app(studio), host=host, port=port, log_level="warning",
                    ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                    ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)

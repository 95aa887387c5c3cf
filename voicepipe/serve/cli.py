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
        max_queue: int = typer.Option(64, "--max-queue", help="Requests waiting for a slot (per voice) before "
                                      "new ones get 503 with Retry-After."),
        open_ops: bool = typer.Option(False, "--open-ops", help="With --api-key, leave /metrics, /docs and "
                                      "/openapi.json open (e.g. for a Prometheus scraper without credentials)."),
        wyoming: str | None = typer.Option(None, "--wyoming", help="Also serve the Wyoming protocol for Home "
                                           "Assistant on this URI, e.g. tcp://0.0.0.0:10200."),
        wyoming_zeroconf: str | None = typer.Option(None, "--wyoming-zeroconf", help="Announce the Wyoming server "
                                                    "over mDNS under this name (needs the zeroconf package)."),
        http: str = typer.Option("auto", "--http", help="HTTP parser: auto (httptools where installed, else h11), "
                                 "httptools or h11."),
    ) -> None:
        """Serve voices over an OpenAI-compatible, streaming /v1/audio/speech (local, offline)."""
        import uvicorn

        from voicepipe.errors import ConfigError
        from voicepipe.serve.app import create_app, load_voices
        from voicepipe.serve.deps import ServeConfig
        from voicepipe.serve.http import HTTP_IMPLS, uvicorn_config

        if voices_dir is not None and not voices_dir.is_dir():
            raise ConfigError(f"--voices-dir {voices_dir}: not a directory")
        cfg = ServeConfig(voices=voice, voices_dir=voices_dir, store_url=store_url, device=device, api_key=api_key,
                          max_concurrent=max_concurrent, queue_timeout_s=queue_timeout,
                          max_input_chars=max_input_chars, max_queue=max_queue, protect_ops=not open_ops,
                          wyoming_uri=wyoming, wyoming_zeroconf=wyoming_zeroconf)  # fmt: skip
        if http not in HTTP_IMPLS:
            raise ConfigError(f"--http {http!r}: expected one of {', '.join(HTTP_IMPLS)}")
        if wyoming_zeroconf and not wyoming:
            raise ConfigError("--wyoming-zeroconf needs --wyoming tcp://HOST:PORT")
        if wyoming:
            from wyoming.server import AsyncServer

            try:
                AsyncServer.from_uri(wyoming)
            except ValueError as e:
                raise ConfigError(f"--wyoming {wyoming!r}: {e} (e.g. tcp://0.0.0.0:10200)") from None
        voices = load_voices(cfg)  # fail fast (one-line error) before binding the port
        app = create_app(cfg, voices)
        app.state.vp.owns_engines = True
        uvicorn.Server(uvicorn_config(app, host, port, header_timeout_s=cfg.header_timeout_s, http=http)).run()

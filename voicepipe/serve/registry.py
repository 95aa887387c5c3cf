"""Voices the server speaks: each is a checkpoint dir (from a local voices dir or the store's voice registry),
loaded once at startup, with its own generation engine."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from voicepipe.errors import ModelError
from voicepipe.serve.engine import EngineConfig, TTSEngine

log = logging.getLogger(__name__)


@dataclass
class Voice:
    """A loaded voice: `engine` generates, `speaker` is the checkpoint's speaker id (None for a base model)."""

    name: str
    path: Path
    source: str
    engine: TTSEngine
    speaker: str | None
    languages: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)  # why this voice: corpus version, checkpoint, evaluation


CARD_FILE = "voice-card.json"  # the registry ref's card, kept beside a voice fetched from the store


def voice_card(path: Path, engine: TTSEngine | None = None) -> dict[str, Any]:
    """The voice's card: the registry's (`voice-card.json`, written when the voice was fetched from the store), else
    what the checkpoint records (`voicepipe.json`: corpus version, language); plus the language it speaks by default."""
    from voicepipe.models.prompt import read_voice_meta

    card: dict[str, Any] = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        card = json.loads((Path(path) / CARD_FILE).read_text())
    if not isinstance(card, dict) or not card:
        meta = read_voice_meta(path)
        card = {k: meta[k] for k in ("speaker", "corpus_version", "epoch", "language") if k in meta}
    if engine is not None:
        card["language"] = engine.language
    return card


def resolve_voice_dir(name: str, voices_dir: Path | None = None, store: Any = None, cache_dir: Path | None = None
                      ) -> tuple[Path, str]:  # fmt: skip
    """Find voice `name`: `<voices_dir>/<name>/` if present, else the store ref `voices/<name>` fetched into
    `cache_dir` (reused when already there). Returns (dir, source description)."""
    if voices_dir is not None:
        local = Path(voices_dir) / name
        if (local / "config.json").is_file():
            return local, f"dir:{local}"
    if store is not None:
        ref = store.get_ref(f"voices/{name}")
        if ref is not None:
            sha = ref["sha"]
            dest = Path(cache_dir or Path.home() / ".cache" / "voicepipe" / "voices") / f"{name}-{sha[:16]}"
            if not (dest / "config.json").is_file():
                store.get_dir(sha, dest)
            card = (ref.get("extra") or {}).get("card")
            if isinstance(card, dict):
                (dest / CARD_FILE).write_text(json.dumps(card, indent=2, default=str) + "\n")
            return dest, f"store:voices/{name}@{sha[:12]}"
    where = [f"{voices_dir}/{name}/" if voices_dir else None, f"store ref voices/{name}" if store else None]
    looked = ", ".join(w for w in where if w) or "nowhere (give --voices-dir or a store)"
    raise ModelError(f"voice {name!r}: not found (looked in {looked})")


def load_voice(name: str, path: Path, source: str, device: str, engine_config: EngineConfig) -> Voice:
    """Load the checkpoint at `path` and build (not start) its engine."""
    from voicepipe.models import load_tts

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    tts = load_tts(path, device=dev, dtype=dtype)
    engine = TTSEngine(tts, engine_config)
    speakers = engine.speakers
    speaker = name.lower() if name.lower() in speakers else (speakers[0] if len(speakers) == 1 else None)
    if speakers and speaker is None:
        raise ModelError(f"voice {name!r}: checkpoint {path} has several speakers {speakers}; name the dir after one")
    langs = sorted((engine.tc.codec_language_id or {}).keys())
    log.info("voice %s loaded from %s (speaker=%s, device=%s)", name, source, speaker, dev)
    return Voice(name=name, path=path, source=source, engine=engine, speaker=speaker, languages=["auto", *langs],
                 card=voice_card(path, engine))

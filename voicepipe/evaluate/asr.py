"""Speech recognisers for intelligibility: Whisper (transformers) in production, PocketSphinx offline.

Both are `voicepipe.models.asr.Asr` with the evaluator's settings (PocketSphinx's default, more thorough search;
Whisper always told English, up to 440 new tokens per 30 s window), one waveform -> stripped text.
PocketSphinx ships a real US-English acoustic and language model inside its PyPI wheel, so tests and
machines without Whisper weights still measure WER with a real recogniser (a much weaker one: its WER is
only comparable with itself, and the report names the backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voicepipe.errors import ModelError
from voicepipe.models.asr import Asr as _Engine

LANGUAGE = "en"
_OPTIONS: dict[str, Any] = {"overload": "normalize", "max_new_tokens": 440}


class Asr(Protocol):
    name: str

    def transcribe(self, wav: np.ndarray, sr: int) -> str: ...


class _OneText:
    """One waveform at any rate -> its transcript (the evaluator needs no confidence)."""

    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.name = engine.name

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        return self.engine.transcribe([wav], LANGUAGE, sr=sr)[0][0].strip()


class PocketSphinxAsr(_OneText):
    """CMU PocketSphinx with the English model bundled in its wheel."""

    def __init__(self, engine: _Engine | None = None) -> None:
        super().__init__(engine or _Engine("pocketsphinx", **_OPTIONS))


class WhisperAsr(_OneText):
    """Whisper from a local directory, or a hub id when online; audio over 30 s goes in 30 s windows."""

    def __init__(self, path: Any = None, device: str = "cpu", settings: Any = None,
                 engine: _Engine | None = None) -> None:
        super().__init__(engine or _Engine("whisper", path, device, settings, **_OPTIONS))


def load_asr(backend: str = "auto", settings: Any = None, device: str = "cpu") -> Asr:
    """`whisper` (via `voicepipe.models.resolve_model("asr")`), a local Whisper directory, `pocketsphinx`, or `auto`:
    Whisper when its files are available locally, else PocketSphinx."""
    if backend == "pocketsphinx":
        return PocketSphinxAsr()
    if backend not in ("auto", "whisper"):
        if Path(backend).is_dir():  # a local Whisper directory
            return WhisperAsr(Path(backend), device=device, settings=settings)
        raise ModelError(f"ASR backend {backend!r}: unknown (use whisper, pocketsphinx, auto or a Whisper dir)")
    try:
        engine = _Engine(backend, None, device, settings, **_OPTIONS)
    except ModelError as e:
        raise ModelError(f"ASR backend whisper: {e}") from None
    return WhisperAsr(engine=engine) if engine.backend == "whisper" else PocketSphinxAsr(engine)

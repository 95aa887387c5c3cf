"""Speech recognisers for intelligibility: Whisper (transformers) in production, PocketSphinx offline.

PocketSphinx ships a real US-English acoustic and language model inside its PyPI wheel, so tests and
machines without Whisper weights still measure WER with a real recogniser (a much weaker one: its WER is
only comparable with itself, and the report names the backend).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from voicepipe.errors import ModelError


class Asr(Protocol):
    name: str

    def transcribe(self, wav: np.ndarray, sr: int) -> str: ...


def _to16k(wav: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return librosa.resample(x, orig_sr=sr, target_sr=16000) if sr != 16000 else x


class PocketSphinxAsr:
    """CMU PocketSphinx with the English model bundled in its wheel."""

    name = "pocketsphinx-en-us"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=16000, loglevel="ERROR")

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        x = _to16k(wav, sr)
        if len(x) == 0:
            return ""
        peak = float(np.max(np.abs(x)))
        if peak > 1.0:
            x = x / peak
        pcm = (x * 32767).astype("<i2").tobytes()
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        return hyp.hypstr if hyp is not None else ""


class WhisperAsr:
    """Whisper through transformers' pipeline, from a local directory (or a hub id when online)."""

    def __init__(self, path: Any, device: str = "cpu") -> None:
        import torch
        from transformers import pipeline

        self.name = f"whisper:{getattr(path, 'name', path)}"
        try:
            self._pipe = pipeline("automatic-speech-recognition", model=str(path), device=device,
                                  torch_dtype=torch.float16 if str(device).startswith("cuda") else torch.float32)
        except Exception as e:
            raise ModelError(f"ASR model {path}: cannot load ({e.__class__.__name__}: {e})") from None

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        x = _to16k(wav, sr)
        if len(x) == 0:
            return ""
        out = self._pipe({"raw": x, "sampling_rate": 16000},
                         generate_kwargs={"language": "en", "task": "transcribe"}, return_timestamps=len(x) > 480000)
        return str(out.get("text", "")).strip()


def load_asr(backend: str = "auto", settings: Any = None, device: str = "cpu") -> Asr:
    """`whisper` (via `voicepipe.models.resolve_model("asr")`), a local Whisper directory, `pocketsphinx`, or `auto`:
    Whisper when its files are available locally, else PocketSphinx."""
    if backend == "pocketsphinx":
        return PocketSphinxAsr()
    if backend not in ("auto", "whisper"):
        from pathlib import Path

        if Path(backend).is_dir():  # a local Whisper directory
            return WhisperAsr(Path(backend), device=device)
        raise ModelError(f"ASR backend {backend!r}: unknown (use whisper, pocketsphinx, auto or a Whisper dir)")
    try:
        from voicepipe.models import resolve_model

        path = resolve_model("asr", None, settings)
        return WhisperAsr(path, device=device)
    except (ModelError, ImportError, TypeError) as e:
        if backend == "whisper":
            raise ModelError(f"ASR backend whisper: {e}") from None
        return PocketSphinxAsr()

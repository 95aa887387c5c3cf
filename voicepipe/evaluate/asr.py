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
    """Whisper (transformers' model + processor, no pipeline: the pipeline pulls in torchcodec) from a local
    directory, or a hub id when online. Audio longer than 30 s is transcribed in 30 s windows."""

    def __init__(self, path: Any, device: str = "cpu") -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.name = f"whisper:{getattr(path, 'name', path)}"
        self.device = device
        self.dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        local = not isinstance(path, str) or not path.count("/") == 1
        try:
            self.processor = WhisperProcessor.from_pretrained(str(path), local_files_only=local)
            self.model = WhisperForConditionalGeneration.from_pretrained(
                str(path), dtype=self.dtype, local_files_only=local).to(device).eval()
        except Exception as e:
            raise ModelError(f"ASR model {path}: cannot load ({e.__class__.__name__}: {e})") from None
        self.max_new_tokens = min(440, int(self.model.config.max_target_positions) - 8)

    def transcribe(self, wav: np.ndarray, sr: int) -> str:
        import torch

        x = _to16k(wav, sr)
        if len(x) == 0:
            return ""
        texts = []
        for start in range(0, len(x), 30 * 16000):
            feats = self.processor(x[start:start + 30 * 16000], sampling_rate=16000, return_tensors="pt")
            with torch.inference_mode():
                ids = self.model.generate(feats.input_features.to(self.device, self.dtype), language="en",
                                          task="transcribe", max_new_tokens=self.max_new_tokens)
            texts.append(self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip())
        return " ".join(t for t in texts if t)


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

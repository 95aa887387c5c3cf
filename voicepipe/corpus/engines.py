"""The models the corpus steps use, loaded lazily (a fully cached rerun loads none) and shared across threads.

- speaker encoder: resemblyzer (real weights, in the wheel) everywhere.
- VAD: silero-vad (real weights, in the wheel) everywhere.
- separation: Demucs htdemucs via `demucs.apply.apply_model`; tests: tiny random HTDemucs (plumbing only).
- diarization: a pyannote.audio 4 pipeline from a local dir; tests: the tiny random pipeline (plumbing only),
  or, with no pipeline configured, speaker turns from the speaker encoder over VAD regions.
- ASR: Whisper through transformers; tests/demo: pocketsphinx (real English model in its wheel).
- codec: the Qwen3-TTS 12 Hz tokenizer; tests: the tiny random tokenizer (plumbing only).

Every call into a model holds that engine's lock: silero's and pyannote's models keep state between calls, and
on 2 cores parallel inference inside one process gains nothing anyway.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from voicepipe.audio import resample
from voicepipe.corpus.config import CorpusParams
from voicepipe.errors import ModelError
from voicepipe.models.asr import Asr as _Asr

SPHINX_FAST = {"loglevel": "FATAL", "fwdflat": False, "bestpath": True, "maxhmmpf": 3000}


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


class SpeakerEncoder:
    """Speaker embeddings (fp32, L2-normalized) from resemblyzer's pretrained d-vector model."""

    sr = 16000

    def __init__(self) -> None:
        from voicepipe.models import load_speaker_encoder

        self.model = load_speaker_encoder()
        self.lock = threading.Lock()

    def embed(self, wav16k: np.ndarray) -> np.ndarray:
        """One embedding for a 16 kHz waveform (fp32, unit norm); zeros for audio under 0.1 s."""
        from voicepipe.errors import InputError

        try:
            with self.lock:
                emb = np.asarray(self.model.embed(np.asarray(wav16k, dtype=np.float32), self.sr), dtype=np.float32)
        except InputError:
            return np.zeros(256, dtype=np.float32)
        return emb / (np.linalg.norm(emb) + 1e-9)

    def centroid(self, wavs16k: list[np.ndarray]) -> np.ndarray:
        """Mean of unit embeddings, computed in fp32 and renormalized (bf16 averaging mixes speakers up)."""
        embs = np.stack([self.embed(w) for w in wavs16k]).astype(np.float32)
        c = embs.mean(axis=0)
        return (c / (np.linalg.norm(c) + 1e-9)).astype(np.float32)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> float:
        return _cosine(a, b)


class Vad:
    """silero-vad speech timestamps in seconds."""

    sr = 16000

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        self.model = load_silero_vad()
        self.lock = threading.Lock()

    def speech(self, wav16k: np.ndarray, *, min_silence_s: float = 0.3, threshold: float = 0.5) -> list[list[float]]:
        import torch
        from silero_vad import get_speech_timestamps

        with self.lock, torch.inference_mode():
            ts = get_speech_timestamps(
                torch.from_numpy(np.asarray(wav16k, dtype=np.float32)),
                self.model,
                sampling_rate=self.sr,
                threshold=threshold,
                min_silence_duration_ms=int(min_silence_s * 1000),
                min_speech_duration_ms=200,
                speech_pad_ms=30,
            )
        return [[t["start"] / self.sr, t["end"] / self.sr] for t in ts]


class Separator:
    """Demucs vocal separation (`apply_model`, chunked with overlap) returning the vocals stem, mono, 24 kHz."""

    def __init__(self, name_or_path: str, device: str = "cpu", settings: Any = None) -> None:
        from voicepipe.models.others import load_demucs

        self.model = load_demucs(name_or_path, settings)
        self.model.eval()
        self.device = device
        if "vocals" not in self.model.sources:
            raise ModelError(f"demucs model {name_or_path}: has no 'vocals' source (has {self.model.sources})")
        self.lock = threading.Lock()

    def vocals(self, wav: np.ndarray, sr: int, progress: bool = False) -> np.ndarray:
        import torch
        from demucs.apply import apply_model

        msr = int(self.model.samplerate)
        x = torch.from_numpy(resample(wav, sr, msr)).float()
        mix = x.expand(int(self.model.audio_channels), -1)[None]  # (1, channels, T)
        ref = mix.mean(1, keepdim=True)
        mean, std = ref.mean(), ref.std() + 1e-8
        with self.lock, torch.inference_mode():
            out = apply_model(
                self.model, (mix - mean) / std, split=True, overlap=0.25, device=self.device, progress=progress
            )
        stem = out[0, self.model.sources.index("vocals")] * std + mean
        return resample(stem.mean(0).cpu().numpy().astype(np.float32), msr, sr)


class Diarizer:
    """pyannote.audio speaker diarization pipeline loaded from a local directory."""

    sr = 16000

    def __init__(self, name_or_path: str, device: str = "cpu", settings: Any = None) -> None:
        from voicepipe.models.others import load_diarization

        self.pipeline = load_diarization(name_or_path, device, settings)
        self.lock = threading.Lock()

    def __call__(self, wav16k: np.ndarray) -> tuple[list[tuple[float, float, str]], list[tuple[float, float]]]:
        """Returns (turns [(start, end, label)], overlapped regions [(start, end)])."""
        import torch

        with self.lock:
            out = self.pipeline({"waveform": torch.from_numpy(wav16k)[None].float(), "sample_rate": self.sr})
        ann = getattr(out, "speaker_diarization", out)  # pyannote 4 returns DiarizeOutput; 3.x an Annotation
        turns = [(float(s.start), float(s.end), str(label)) for s, _, label in ann.itertracks(yield_label=True)]
        overlap = [(float(s.start), float(s.end)) for s in ann.get_overlap()]
        return turns, overlap


class Asr(_Asr):
    """The corpus's recogniser (`voicepipe.models.asr.Asr`): a fast PocketSphinx search (no fwdflat pass, fewer
    HMMs per frame; bestpath word posteriors = confidence), input clipped to [-1, 1]; Whisper up to 200 new tokens.
    `transcribe(wavs16k, language)` -> [(text, confidence)]; `language` None lets Whisper detect it."""

    def __init__(self, backend: str, model: str, device: str = "cpu", settings: Any = None) -> None:
        if backend not in ("whisper", "pocketsphinx"):
            raise ModelError(f"asr backend {backend!r}: unknown (expected whisper or pocketsphinx)")
        super().__init__(backend, model, device, settings, sphinx_options=SPHINX_FAST, overload="clip",
                         max_new_tokens=200)


class Codec:
    """The Qwen3-TTS 12 Hz speech tokenizer: 24 kHz waveforms -> (frames, 16) int codes."""

    sr = 24000

    def __init__(self, name_or_path: str, device: str = "cpu", settings: Any = None) -> None:
        from voicepipe.models import load_codec

        self.tokenizer = load_codec(name_or_path, device=device, settings=settings)
        self.lock = threading.Lock()

    def encode(self, wavs24k: list[np.ndarray]) -> list[list[list[int]]]:
        with self.lock:
            res = self.tokenizer.encode([np.asarray(w, dtype=np.float32) for w in wavs24k], sr=self.sr)
        return [c.cpu().tolist() for c in res.audio_codes]


class Engines:
    """Lazily-built engines for one build (`loaded` tells which models were actually loaded)."""

    def __init__(self, params: CorpusParams, settings: Any = None) -> None:
        self.params = params
        self.settings = settings
        self.device = pick_device(params.device)
        self.loaded: set[str] = set()
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, build: Any) -> Any:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = build()
                self.loaded.add(name)
            return self._cache[name]

    @property
    def speaker(self) -> SpeakerEncoder:
        return self._get("speaker", SpeakerEncoder)

    @property
    def vad(self) -> Vad:
        return self._get("vad", Vad)

    @property
    def separator(self) -> Separator:
        return self._get("separator", lambda: Separator(self.params.demucs_model, self.device, self.settings))

    @property
    def diarizer(self) -> Diarizer:
        assert self.params.diarization_model
        return self._get("diarizer", lambda: Diarizer(self.params.diarization_model, self.device, self.settings))

    @property
    def asr(self) -> Asr:
        p = self.params
        return self._get("asr", lambda: Asr(p.asr_backend, p.asr_model, self.device, self.settings))

    @property
    def codec(self) -> Codec:
        return self._get("codec", lambda: Codec(self.params.codec_model, self.device, self.settings))

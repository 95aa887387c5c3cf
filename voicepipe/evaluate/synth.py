"""Synthesis for evaluation: the package's own `generate_custom_voice` / `generate_voice_clone`, with the codec
codes kept (for the degeneracy checks), a token cap proportional to the text, a fixed seed per sample, and timing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from voicepipe.evaluate.metrics import CODEC_FPS


@dataclass
class Synthesis:
    """One generated sample."""

    text: str
    wav: np.ndarray
    sr: int
    codes: np.ndarray | None  # (frames, codebooks) actually generated (a clone's reference codes removed)
    compute_s: float
    max_new_tokens: int

    @property
    def audio_s(self) -> float:
        return len(self.wav) / self.sr if self.sr else 0.0

    @property
    def hit_cap(self) -> bool:
        """Generation ran until the token cap: the model never emitted end-of-speech."""
        return self.codes is not None and len(self.codes) >= self.max_new_tokens - 1


def max_new_tokens_for(text: str, s_per_char: float = 0.2, base_s: float = 2.0, ceiling: int = 2048) -> int:
    """Codec-frame cap for `text`: `base_s + s_per_char * chars` seconds at 12.5 frames/s (0.2 s/char is ~3x
    slower than normal speech), so a model that never says end-of-speech stops in bounded time."""
    return int(min(ceiling, math.ceil((base_s + s_per_char * len(text)) * CODEC_FPS)))


@contextmanager
def capture_codes(tts: Any) -> Iterator[list[Any]]:
    """Record the code tensors the wrapper passes to its codec's `decode` (the wrapper returns only audio)."""
    codec = tts.model.speech_tokenizer
    had_own = "decode" in vars(codec)
    original = codec.decode
    seen: list[Any] = []

    def decode(items: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(item["audio_codes"] for item in items)
        return original(items, *args, **kwargs)

    object.__setattr__(codec, "decode", decode)
    try:
        yield seen
    finally:
        if had_own:
            object.__setattr__(codec, "decode", original)
        else:
            object.__delattr__(codec, "decode")


def _as_numpy_codes(codes: Any) -> np.ndarray:
    if hasattr(codes, "detach"):
        codes = codes.detach().float().cpu().numpy() if codes.is_floating_point() else codes.detach().cpu().numpy()
    return np.asarray(codes)


def synthesize(tts: Any, text: str, *, speaker: str | None = None, clone_prompt: list[Any] | None = None,
               language: str = "English", seed: int = 0, max_new_tokens: int | None = None,
               generate_kwargs: dict[str, Any] | None = None) -> Synthesis:
    """Synthesize one sentence with a fine-tuned custom voice (`speaker`) or the base model's zero-shot clone
    (`clone_prompt` from `tts.create_voice_clone_prompt`). The torch seed is fixed per call for reproducibility."""
    import torch

    cap = max_new_tokens or max_new_tokens_for(text)
    kwargs = dict(generate_kwargs or {}, max_new_tokens=cap)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with capture_codes(tts) as seen, torch.inference_mode():
        if clone_prompt is not None:
            wavs, sr = tts.generate_voice_clone(text, language=language, voice_clone_prompt=clone_prompt, **kwargs)
        else:
            if speaker is None:
                raise ValueError("synthesize needs a speaker (custom voice) or a clone_prompt (base model)")
            wavs, sr = tts.generate_custom_voice(text, speaker=speaker, language=language, **kwargs)
    compute_s = time.perf_counter() - t0
    wav = np.asarray(wavs[0].detach().cpu().numpy() if hasattr(wavs[0], "detach") else wavs[0], dtype=np.float32)
    codes = _as_numpy_codes(seen[0]) if seen else None
    if codes is not None and clone_prompt is not None and clone_prompt[0].ref_code is not None:
        codes = codes[int(clone_prompt[0].ref_code.shape[0]):]  # the wrapper prepends the reference's codes
    return Synthesis(text=text, wav=wav.reshape(-1), sr=int(sr), codes=codes, compute_s=compute_s,
                     max_new_tokens=cap)

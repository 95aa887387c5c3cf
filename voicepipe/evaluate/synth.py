"""Synthesis for evaluation, with the codec codes kept (for the degeneracy checks), a token cap proportional to the
text, fixed seeds, and timing.

- Fine-tuned checkpoints: `synthesize_batch` runs every evaluation text through the serving engine at once
  (`voicepipe.serve.engine.TTSEngine`: the prompt layout, sampling from the checkpoint's generation_config.json and
  the code path production uses), so what is scored is what will be served; its RTF is the engine's.
- The base model's zero-shot clone (the floor a fine-tune must beat): `synthesize`, the package's own
  `generate_voice_clone` with the reference clip and its transcript (in-context cloning, the stronger floor; the
  engine serves custom voices, not clone prompts).
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

SAMPLE_RATE = 24000


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


def engine_prompts(engine: Any, texts: list[str], *, speaker: str | None, language: str | None = None) -> list[Any]:
    """The prompts evaluation submits: `engine.prepare` with the checkpoint's trained language unless `language`."""
    return [engine.prepare(t, speaker=speaker, language=language) for t in texts]


def synthesize_batch(engine: Any, texts: list[str], *, speaker: str | None, caps: list[int],
                     language: str | None = None, seed: int = 0, generation: Any = None,
                     timeout_s: float | None = None, force_lengths: bool = False) -> tuple[list[Synthesis], float]:
    """Synthesize all `texts` through a running `TTSEngine`, submitted together (the engine batches them).

    Sampling is `generation` (default: the engine's, i.e. the checkpoint's generation_config.json) with each text's
    frame cap. Returns the samples (`compute_s` = that request's wall time, submission to its last audio) and the
    wall time of the whole batch. The torch seed is set once before submission: greedy decoding is exactly
    reproducible, sampled decoding is up to the order the engine admits requests in. `force_lengths` (benchmarks):
    every text runs to its cap (end-of-speech suppressed until then).
    """
    import threading

    import torch

    from voicepipe.serve.engine import EngineError

    if len(caps) != len(texts):
        raise ValueError(f"synthesize_batch: {len(texts)} texts but {len(caps)} caps")
    prompts = engine_prompts(engine, texts, speaker=speaker, language=language)
    base = generation or engine.generation
    out: list[dict[str, Any]] = [dict(chunks=[], done=threading.Event(), stats={}, error=None) for _ in texts]

    def on_event(i: int) -> Any:
        def handle(ev: Any) -> None:
            r = out[i]
            if ev.kind == "audio":
                r["chunks"].append(ev.audio)
            elif ev.kind == "done":
                r["stats"] = ev.stats
                r["done"].set()
            else:
                r["error"] = ev.message
                r["done"].set()

        return handle

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    handles = [engine.submit(p, base.with_overrides(max_new_tokens=cap, **({"min_new_tokens": cap} if force_lengths
                                                                            else {})), on_event(i))
               for i, (p, cap) in enumerate(zip(prompts, caps, strict=True))]  # fmt: skip
    try:
        for i, r in enumerate(out):
            if not r["done"].wait(timeout_s):
                raise EngineError(f"evaluation text {i} did not finish within {timeout_s} s")
            if r["error"]:
                raise EngineError(f"evaluation text {i}: {r['error']}")
    finally:
        for h in handles:
            h.cancel()
    wall = time.perf_counter() - t0
    samples = []
    for text, cap, h, r in zip(texts, caps, handles, out, strict=True):
        wav = np.concatenate(r["chunks"]).astype(np.float32) if r["chunks"] else np.zeros(0, np.float32)
        codes = torch.stack(h.frames).numpy() if h.frames else np.zeros((0, engine.n_groups), np.int64)
        samples.append(Synthesis(text=text, wav=wav, sr=engine.sample_rate, codes=codes,
                                 compute_s=float(r["stats"].get("wall_s", wall)), max_new_tokens=cap))
    return samples, wall

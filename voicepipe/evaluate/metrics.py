"""Objective metrics for synthesized speech: validity, speaker similarity, intelligibility, naturalness, speed.

Every function here works on plain numpy arrays so it can be tested on constructed signals
(silence, white noise, a stuck code stream) and on real recordings without a TTS model.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

CODEC_FPS = 12.5  # Qwen3-TTS-12Hz: one codec frame = 80 ms of 24 kHz audio


@dataclass(frozen=True)
class ValidityThresholds:
    """Limits that make one synthesized sample invalid. Defaults are set from espeak-ng speech, white/brown noise,
    pure tones and silence (see tests/test_evaluate_metrics.py) and from human speaking rates (10-20 chars/s)."""

    silence_dbfs: float = -50.0  # whole-clip RMS below this is silence
    flatness_max: float = 0.30  # median spectral flatness of active frames; speech ~0.001-0.05, white noise ~0.56
    modulation_min_db: float = 2.0  # std of active-frame energy in dB; speech ~7 dB, stationary noise/tones <0.5 dB
    vad_min_fraction: float = 0.30  # share of the clip that silero-vad calls speech; espeak speech ~0.85, noise 0.0
    chars_per_s_min: float = 4.0  # slower than this = too long for the text (stalls, trailing junk)
    chars_per_s_max: float = 35.0  # faster than this = too short for the text (truncated, skipped words)
    stuck_max_frames: int = 25  # 2 s of the same codebook-0 token
    loop_max_frames: int = 38  # ~3 s of a repeating codebook-0 pattern
    loop_max_period: int = 16


@dataclass
class Validity:
    """The outcome of the validity checks for one sample: `reasons` is empty when valid."""

    reasons: list[str] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.reasons


def _frames_db(wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    import librosa

    n_fft = 1024 if sr >= 16000 else 512
    hop = max(1, sr // 100)
    rms = librosa.feature.rms(y=wav, frame_length=n_fft, hop_length=hop, center=True)[0]
    flat = librosa.feature.spectral_flatness(y=wav, n_fft=n_fft, hop_length=hop, center=True)[0]
    return 20.0 * np.log10(rms + 1e-10), flat


@lru_cache(maxsize=1)
def _silero():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_fraction(wav: np.ndarray, sr: int) -> float:
    """Share of the clip that silero-vad (real weights shipped in its wheel) marks as speech."""
    import librosa
    import torch
    from silero_vad import get_speech_timestamps

    x = librosa.resample(wav, orig_sr=sr, target_sr=16000) if sr != 16000 else wav
    if len(x) < 16000 * 0.1:
        return 0.0
    ts = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), _silero(),
                               sampling_rate=16000)
    return float(sum(t["end"] - t["start"] for t in ts) / len(x))


def check_audio(wav: np.ndarray, sr: int, text: str | None = None,
                th: ValidityThresholds = ValidityThresholds()) -> Validity:
    """Is this waveform plausibly speech of `text`? Checks NaN/inf, silence, noise-like spectrum, missing
    speech modulation, silero-vad speech share and (with `text`) a duration plausible for the text."""
    v = Validity()
    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    dur = len(wav) / sr if sr else 0.0
    v.measures["duration_s"] = dur
    if len(wav) == 0:
        v.reasons.append("empty audio")
        return v
    if not np.all(np.isfinite(wav)):
        v.reasons.append(f"non-finite samples ({int((~np.isfinite(wav)).sum())} NaN/inf)")
        return v
    rms_dbfs = float(20 * np.log10(np.sqrt(np.mean(wav.astype(np.float64) ** 2)) + 1e-10))
    v.measures["rms_dbfs"] = rms_dbfs
    if rms_dbfs < th.silence_dbfs:
        v.reasons.append(f"silence (RMS {rms_dbfs:.1f} dBFS < {th.silence_dbfs:g})")
        return v
    db, flat = _frames_db(wav, sr)
    active = db > db.max() - 40.0
    flatness = float(np.median(flat[active]))
    modulation = float(np.std(db[active]))
    v.measures.update(flatness=flatness, modulation_db=modulation)
    if flatness > th.flatness_max:
        v.reasons.append(f"noise-like spectrum (flatness {flatness:.2f} > {th.flatness_max:g})")
    if modulation < th.modulation_min_db:
        v.reasons.append(f"no speech modulation (energy std {modulation:.2f} dB < {th.modulation_min_db:g})")
    vad = speech_fraction(wav, sr)
    v.measures["vad_fraction"] = vad
    if vad < th.vad_min_fraction:
        v.reasons.append(f"no speech detected (VAD {vad:.0%} < {th.vad_min_fraction:.0%})")
    if text:
        n = len(normalize_text(text).replace(" ", ""))
        cps = n / dur if dur > 0 else math.inf
        v.measures["chars_per_s"] = cps
        if cps < th.chars_per_s_min:
            v.reasons.append(f"too long for the text ({dur:.1f} s for {n} chars)")
        elif cps > th.chars_per_s_max:
            v.reasons.append(f"too short for the text ({dur:.1f} s for {n} chars)")
    return v


def _longest_true_run(mask: np.ndarray) -> int:
    best = cur = 0
    for m in mask:
        cur = cur + 1 if m else 0
        best = max(best, cur)
    return best


def check_codes(codes: Any, th: ValidityThresholds = ValidityThresholds()) -> Validity:
    """Degenerate codec streams: empty, non-finite, one codebook-0 token stuck, or a short pattern looping.

    `codes` is (frames, codebooks) or (frames,). A run of period-p repetition means codes[t] == codes[t-p] for
    consecutive t; p=1 is a stuck token. Hand-written because no library checks codec token streams.
    """
    v = Validity()
    arr = np.asarray(codes.detach().cpu().numpy() if hasattr(codes, "detach") else codes)
    if arr.size == 0 or arr.shape[0] == 0:
        v.reasons.append("no codec frames generated")
        return v
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        v.reasons.append("non-finite codes")
        return v
    c0 = arr[:, 0] if arr.ndim > 1 else arr
    n = len(c0)
    v.measures.update(frames=float(n), unique_c0=float(len(np.unique(c0))))
    stuck = _longest_true_run(c0[1:] == c0[:-1]) + 1 if n > 1 else 1
    v.measures["longest_stuck_frames"] = float(stuck)
    if stuck > th.stuck_max_frames:
        v.reasons.append(f"stuck codes ({stuck} identical frames = {stuck / CODEC_FPS:.1f} s)")
        return v
    for p in range(2, min(th.loop_max_period, n - 1) + 1):
        run = _longest_true_run(c0[p:] == c0[:-p])
        if run + p > th.loop_max_frames:
            v.measures["loop_period"] = float(p)
            v.reasons.append(f"looping codes (period {p} repeated over {run + p} frames = "
                             f"{(run + p) / CODEC_FPS:.1f} s)")
            break
    return v


# ---- intelligibility ------------------------------------------------------------------------------------------

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}\u2018\u2019\u201c\u201d\u2013\u2014\u2026]")


def normalize_text(text: str) -> str:
    """Lower-case, strip punctuation (keeping apostrophes inside words, e.g. "didn't"), collapse whitespace:
    the Seed-TTS-eval convention before WER."""
    t = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    t = re.sub(r"(?<=\w)'(?=\w)", "\x00", t)
    t = _PUNCT.sub(" ", t).replace("\x00", "'")
    return " ".join(t.split())


def wer_cer(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """Corpus-level WER and CER (jiwer) after `normalize_text` on both sides. Empty references are skipped."""
    import jiwer

    pairs = [(normalize_text(r), normalize_text(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        return math.nan, math.nan
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    return float(jiwer.wer(r, h)), float(jiwer.cer(r, h))


# ---- speaker similarity ---------------------------------------------------------------------------------------


def embed_speaker(encoder: Any, wav: np.ndarray, sr: int, min_voice_s: float = 0.5) -> np.ndarray | None:
    """L2-normalised speaker embedding (fp32) of one clip, or None when the clip has too little voice to embed.

    `encoder` is `voicepipe.models.load_speaker_encoder()` (any backend; its `info` says which) or a bare
    resemblyzer VoiceEncoder. Unlike the encoder's `embed`, a clip with under `min_voice_s` of voice gets no
    embedding rather than an embedding of silence or noise. resemblyzer: its own VAD trimming decides the voice and
    the trimmed audio is embedded (as before); other backends: silero-vad measures the voice and the whole clip is
    embedded, as the published SIM protocols do.
    """
    import librosa

    from voicepipe.errors import InputError

    wav = np.asarray(wav, dtype=np.float32).reshape(-1)
    if len(wav) == 0 or not np.all(np.isfinite(wav)):
        return None
    x = librosa.resample(wav, orig_sr=sr, target_sr=16000) if sr != 16000 else wav
    if getattr(getattr(encoder, "info", None), "backend", "resemblyzer") != "resemblyzer":
        if speech_fraction(x, 16000) * len(x) / 16000 < min_voice_s:
            return None
        try:
            e = np.asarray(encoder.embed(x, 16000), dtype=np.float32)
        except InputError:
            return None
    else:
        from resemblyzer import preprocess_wav

        try:
            pre = preprocess_wav(x, source_sr=16000)
        except Exception:  # resemblyzer's VAD trimming can fail on junk; fall back to the raw clip
            pre = x
        if len(pre) < 16000 * min_voice_s:  # too little voice left after trimming: nothing to embed
            return None
        voice_encoder = getattr(encoder, "encoder", encoder)
        e = np.asarray(voice_encoder.embed_utterance(pre), dtype=np.float32)
    nrm = float(np.linalg.norm(e))
    return e / nrm if nrm > 0 and np.isfinite(nrm) else None


def real_speech_sim(embeddings: list[np.ndarray]) -> dict[str, float] | None:
    """How similar the target's own real recordings are to each other, by the same speaker model: each held-out
    clip's cosine to the centroid of the OTHER clips (leave-one-out). Its mean is the SIM a real recording of the
    speaker gets (the calibration point for a checkpoint's SIM), its SD the same-speaker spread. None under 3 clips.
    """
    if len(embeddings) < 3:
        return None
    e = np.stack([np.asarray(x, dtype=np.float32) for x in embeddings])
    sims = [cosine(e[i], centroid(list(np.delete(e, i, axis=0)))) for i in range(len(e))]
    return {"mean": float(np.mean(sims)), "sd": float(np.std(sims, ddof=1)), "min": float(np.min(sims)),
            "n": float(len(sims))}


def centroid(embeddings: list[np.ndarray]) -> np.ndarray:
    """Mean of L2-normalised embeddings in fp32 (averaging in bf16 mixes speakers), re-normalised."""
    if not embeddings:
        raise ValueError("no embeddings to average")
    m = np.mean(np.stack([e.astype(np.float32) for e in embeddings]), axis=0)
    return m / np.linalg.norm(m)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- naturalness ----------------------------------------------------------------------------------------------


def mos_backend() -> str | None:
    """Name of the MOS predictor that can be loaded here, or None. DNSMOS (P.835 + P.808) ships its ONNX weights
    inside the `speechmos` wheel, so it runs offline."""
    try:
        import speechmos.dnsmos  # noqa: F401
    except Exception:
        return None
    return "dnsmos"


MOS_WINDOW_S = 9.01  # DNSMOS's input length (speechmos.dnsmos.INPUT_LENGTH)


def mos_windows(x: np.ndarray, sr: int = 16000) -> list[np.ndarray]:
    """The clip cut into DNSMOS's 9.01 s inputs without overlap, the last one ending at the clip's end (so every
    sample is heard); a shorter clip repeated up to one window, as DNSMOS does. speechmos itself slides the window
    by 1 s: 7 windows for a 15 s clip, and 3-7 for a 2-3 s clip it repeats first, where this takes 2 and 1. The
    model's CPU cost is ~0.6-0.9 s a window (measured here), which made DNSMOS 40 % of a CPU corpus build."""
    n = int(MOS_WINDOW_S * sr)
    if len(x) <= n:
        return [np.tile(x, -(-n // len(x)))[:n]]
    starts = list(range(0, len(x) - n + 1, n))
    if starts[-1] + n < len(x):
        starts.append(len(x) - n)
    return [x[s : s + n] for s in starts]


def predict_mos(wav: np.ndarray, sr: int) -> dict[str, float] | None:
    """DNSMOS scores of one clip: `ovrl` (P.835 overall), `sig`, `bak`, `p808`, each the mean over the clip's
    `mos_windows` (speechmos's model and polynomial fits); None if unavailable/unscorable."""
    if mos_backend() is None:
        return None
    import librosa
    from speechmos import dnsmos

    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    if len(x) == 0 or not np.all(np.isfinite(x)):
        return None
    x = librosa.resample(x, orig_sr=sr, target_sr=16000) if sr != 16000 else x
    peak = float(np.max(np.abs(x)))
    if peak == 0:
        return None
    if peak > 1:
        x = x / peak
    runs = [dnsmos.run(w, sr=16000) for w in mos_windows(x)]  # one 9.01 s input is one model call
    return {k: float(np.mean([r[f"{k}_mos"] for r in runs])) for k in ("ovrl", "sig", "bak", "p808")}


def rtf(synthesis_seconds: float, audio_seconds: float) -> float:
    """Real-time factor: seconds of compute per second of audio (below 1 = faster than real time)."""
    return synthesis_seconds / audio_seconds if audio_seconds > 0 else math.inf

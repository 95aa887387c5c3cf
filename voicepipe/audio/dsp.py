"""Small DSP helpers: loudness (pyloudnorm, ITU-R BS.1770), peaks, clipping, a frame-energy SNR estimate."""

from __future__ import annotations

import numpy as np


def loudness_lufs(wav: np.ndarray, sr: int) -> float:
    """Integrated loudness in LUFS (BS.1770 via pyloudnorm); -inf for silence or audio under 0.4 s."""
    import pyloudnorm as pyln

    if wav.size < int(0.4 * sr):
        return float("-inf")
    return float(pyln.Meter(sr).integrated_loudness(np.asarray(wav, dtype=np.float64)))


def normalize_loudness(
    wav: np.ndarray, sr: int, target_lufs: float = -23.0, peak: float = 0.95
) -> tuple[np.ndarray, float]:
    """Scale to `target_lufs`, but never so far that the peak exceeds `peak`. Returns (audio, gain)."""
    lufs = loudness_lufs(wav, sr)
    top = float(np.max(np.abs(wav))) if wav.size else 0.0
    if not np.isfinite(lufs) or top == 0.0:
        return np.asarray(wav, dtype=np.float32), 1.0
    gain = 10.0 ** ((target_lufs - lufs) / 20.0)
    gain = min(gain, peak / top)
    return (np.asarray(wav, dtype=np.float32) * gain).astype(np.float32), float(gain)


def clipped_fraction(wav: np.ndarray, level: float = 0.99, min_run: int = 3) -> float:
    """Fraction of samples inside runs of >= `min_run` consecutive samples at |x| >= `level` (flat tops)."""
    hot = np.abs(wav) >= level
    if not hot.any():
        return 0.0
    # run lengths of consecutive hot samples
    edges = np.diff(np.concatenate([[0], hot.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = ends - starts
    return float(lengths[lengths >= min_run].sum() / wav.size)


def frame_rms_db(wav: np.ndarray, sr: int, frame_s: float = 0.025) -> np.ndarray:
    """RMS level of non-overlapping frames in dBFS."""
    n = max(1, int(frame_s * sr))
    usable = (wav.size // n) * n
    if usable == 0:
        return np.array([-120.0])
    frames = wav[:usable].reshape(-1, n).astype(np.float64)
    return 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def estimate_snr_db(speech: np.ndarray, noise: np.ndarray | None, sr: int) -> float:
    """SNR estimate: speech frames' mean power over the noise's mean power.

    With `noise` (e.g. the non-speech parts of the episode, or the separator's residual) the noise power is
    measured there; without it, the quietest 10 % of the segment's own frames stand in for the noise floor.
    Hand-written because no maintained package does a reference-free SNR this simply (DNSMOS needs ONNX
    weights we cannot download here).
    """
    sp = frame_rms_db(speech, sr)
    loud = sp[sp >= np.percentile(sp, 50)]
    speech_db = 10 * np.log10(np.mean(10 ** (loud / 10)))
    if noise is not None and noise.size >= int(0.1 * sr):
        nz = frame_rms_db(noise, sr)
        noise_db = 10 * np.log10(np.mean(10 ** (nz / 10)))
    else:
        noise_db = float(np.percentile(sp, 10))
    return float(speech_db - noise_db)

"""voicepipe.audio: audio I/O and DSP helpers shared by every stage (`formats` belongs to serving)."""

from voicepipe.audio.dsp import (
    clipped_fraction,
    estimate_snr_db,
    frame_rms_db,
    loudness_lufs,
    normalize_loudness,
)
from voicepipe.audio.io import load_audio, load_audio_checked, probe_duration, resample, save_wav

__all__ = [
    "clipped_fraction",
    "estimate_snr_db",
    "frame_rms_db",
    "load_audio",
    "load_audio_checked",
    "loudness_lufs",
    "normalize_loudness",
    "probe_duration",
    "resample",
    "save_wav",
]

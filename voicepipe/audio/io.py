"""Audio I/O: decode any common codec to float32 mono at a chosen rate, write wav, probe duration.

soundfile handles wav/flac/ogg directly; everything else (mp3, m4a, opus, webm ...) is decoded by the
ffmpeg binary (the same decoder pydub drives) into raw float32 PCM on a pipe.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from voicepipe.errors import InputError

_SOUNDFILE_EXT = {".wav", ".flac", ".ogg"}


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling (soxr through librosa); float32 in, float32 out."""
    if sr_in == sr_out:
        return np.asarray(wav, dtype=np.float32)
    import librosa

    return librosa.resample(np.asarray(wav, dtype=np.float32), orig_sr=sr_in, target_sr=sr_out, res_type="soxr_hq")


def probe_duration(path: str | Path) -> float | None:
    """Duration the container/stream header declares (ffprobe), or None when it declares none."""
    try:
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        dur = json.loads(out.stdout or "{}").get("format", {}).get("duration")
        return float(dur) if dur not in (None, "N/A") else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _ffmpeg_decode(path: Path, sr: int) -> tuple[np.ndarray, str]:
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(sr), "-"],
        capture_output=True,
        timeout=3600,
    )
    err = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        first = err.splitlines()[-1] if err else f"ffmpeg exit {proc.returncode}"
        raise InputError(f"{path}: cannot decode audio ({first})")
    return np.frombuffer(proc.stdout, dtype=np.float32).copy(), err


def load_audio(path: str | Path, sr: int = 24000) -> np.ndarray:
    """Decode `path` to a float32 mono waveform at `sr` Hz. Raises InputError naming the file and why."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such audio file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in _SOUNDFILE_EXT:
        try:
            data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
            return resample(data.mean(axis=1), file_sr, sr)
        except (sf.LibsndfileError, RuntimeError, ValueError):
            pass  # fall back to ffmpeg (e.g. a wav with an unusual codec)
    wav, _ = _ffmpeg_decode(path, sr)
    if wav.size == 0:
        raise InputError(f"{path}: no audio stream could be decoded")
    return wav


def load_audio_checked(path: str | Path, sr: int = 24000, min_complete: float = 0.97) -> np.ndarray:
    """Like `load_audio`, but also reject a file that decodes to less than `min_complete` of the duration
    its header declares (a truncated download: an mp3 whose Xing/Info header counts more frames)."""
    wav = load_audio(path, sr)
    declared = probe_duration(path)
    got = wav.size / sr
    if declared and declared > 1.0 and got < min_complete * declared - 0.25:
        raise InputError(f"{path}: truncated audio (decoded {got:.1f} s of the {declared:.1f} s its header declares)")
    return wav


def save_wav(path: str | Path, wav: np.ndarray, sr: int) -> Path:
    """Write a mono float waveform as 16-bit PCM wav (creates parent dirs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16")
    return path

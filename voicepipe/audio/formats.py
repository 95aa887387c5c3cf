"""Audio encodings for the speech API: wav, pcm, mp3, opus, flac, aac — whole buffers or streamed chunk by chunk.

Encoding goes through libsndfile (`soundfile`: WAV, FLAC, MP3, Ogg/Opus) and, for AAC, ffmpeg. Streaming uses the
same encoders writing into a drain buffer: every `feed()` returns the bytes produced so far, so compressed audio
leaves as it is made (MP3/AAC streams pay ffmpeg's start-up, about 0.25 s, once per request; voice agents
stream `pcm`, which has no such cost). Raw PCM is signed 16-bit little-endian mono (OpenAI's `pcm` format); a
streamed WAV has an "unknown length" header (0xFFFFFFFF sizes), which libsndfile and ffmpeg both read.

FLAC is never streamed: a FLAC stream's STREAMINFO must carry the total sample count, which is only known at the
end; with 0 there (the streaming value) libsndfile refuses the file ("array is too big") although ffmpeg reads it.
So `StreamEncoder("flac")` holds the audio and returns the whole, seekable file from `close()`; the server sends
FLAC as one file with a Content-Length. AAC is ADTS, which ffmpeg reads; libsndfile has no AAC decoder at all.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import threading

import numpy as np
import soundfile as sf

from voicepipe.errors import InputError

FORMATS = ("wav", "pcm", "mp3", "opus", "flac", "aac")
MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg-encapsulated Opus, as OpenAI returns it
    "flac": "audio/flac",
    "aac": "audio/aac",
}
_SF = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
# Streams through ffmpeg: AAC (libsndfile has no AAC) and MP3 (libsndfile's MP3 writer patches a VBR header at the
# start of the file on close, which a stream has already sent; ffmpeg writes a plain CBR stream without one).
_FFMPEG = {
    "aac": ["-c:a", "aac", "-b:a", "96k", "-f", "adts"],
    # no ID3v2 tag: a stream's first bytes are MP3 frames, playable at once
    "mp3": ["-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0", "-id3v2_version", "0", "-f", "mp3"],
}
_SF_STREAM = ("opus",)
STREAMABLE = ("pcm", "wav", "mp3", "opus", "aac")  # bytes leave as audio is made; FLAC is sent whole (see above)
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def _check(fmt: str, sr: int) -> str:
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise InputError(f"response_format {fmt!r}: unsupported (supported: {', '.join(FORMATS)})")
    if fmt == "opus" and sr not in _OPUS_RATES:
        raise InputError(f"opus needs a sample rate in {_OPUS_RATES}, got {sr}")
    return fmt


def to_pcm16(wav: np.ndarray) -> bytes:
    """float32 [-1, 1] mono -> signed 16-bit little-endian bytes."""
    a = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return (a * 32767.0).astype("<i2").tobytes()


def wav_header(sr: int, n_bytes: int | None = None) -> bytes:
    """A 44-byte PCM16 mono WAV header; `n_bytes=None` writes the streaming 'unknown length' sizes."""
    data = 0xFFFFFFFF if n_bytes is None else n_bytes
    riff = 0xFFFFFFFF if n_bytes is None else 36 + n_bytes
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, sr, sr * 2, 2, 16,
                       b"data", data)  # fmt: skip


class _Drain(io.RawIOBase):
    """A write-only, seekable sink that hands out what was written since the last `take()`.

    libsndfile may seek back to patch a header at close (e.g. FLAC's total-sample count); bytes already handed
    out cannot change, so such late patches are dropped (the stream stays valid: FLAC allows an unknown length).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._base = 0  # absolute offset of _buf[0]
        self._pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        b = bytes(b)
        start = self._pos - self._base
        if start < 0:  # patch of bytes already sent: keep only the part that is still ours
            cut = min(-start, len(b))
            b, start = b[cut:], 0
            self._pos += cut
        end = start + len(b)
        if end > len(self._buf):
            self._buf.extend(b"\0" * (end - len(self._buf)))
        self._buf[start:end] = b
        self._pos += len(b)
        return len(b) if start >= 0 else 0

    def seek(self, offset: int, whence: int = 0) -> int:
        size = self._base + len(self._buf)
        self._pos = offset if whence == 0 else (self._pos + offset if whence == 1 else size + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:  # libsndfile may probe; nothing to read back
        return b""

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._base += len(self._buf)
        self._buf.clear()
        return out


class StreamEncoder:
    """Incremental encoder: `feed(float32 chunk) -> bytes`, then `close() -> bytes` (the tail)."""

    # audio an ffmpeg encoder must be fed before its first frame can come out: ffmpeg's MP3 and AAC encoders make
    # nothing of 80 ms (a 1-frame first chunk of the engine) and their first frame from 90 / 130 ms on (measured,
    # 2026-12-04); 160 ms (two engine frames) always gave it. A server waits for that first frame (`wait_output`)
    # only once this much was fed, so a smaller first chunk does not wait for bytes that cannot come yet.
    FFMPEG_FIRST_S = 0.16

    def __init__(self, fmt: str, sr: int):
        self.fmt = _check(fmt, sr)
        self.sr = sr
        self.fed_s = 0.0  # audio fed so far (seconds)
        self._sf: sf.SoundFile | None = None
        self._proc: subprocess.Popen | None = None
        self._started = False
        self._held: list[np.ndarray] = []  # FLAC: the whole clip, encoded at close()
        if self.fmt in _SF_STREAM:
            self._drain = _Drain()
            kind, sub = _SF[self.fmt]
            self._sf = sf.SoundFile(self._drain, mode="w", samplerate=sr, channels=1, format=kind, subtype=sub)
        elif self.fmt in _FFMPEG:
            self._start_ffmpeg()

    def _start_ffmpeg(self) -> None:
        ff = shutil.which("ffmpeg")
        if ff is None:
            raise InputError(f"response_format {self.fmt!r} (streamed) needs ffmpeg on PATH")
        self._proc = subprocess.Popen(
            [ff, "-hide_banner", "-loglevel", "error", "-probesize", "32", "-analyzeduration", "0",
             "-avioflags", "direct", "-f", "s16le", "-ar", str(self.sr), "-ac", "1", "-i", "pipe:0",
             *_FFMPEG[self.fmt], "-flush_packets", "1", "pipe:1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip
        self._out = bytearray()
        self._lock = threading.Condition()
        self._eof = False

        def pump() -> None:
            assert self._proc is not None and self._proc.stdout is not None
            while chunk := self._proc.stdout.read1(65536):  # type: ignore[attr-defined]
                with self._lock:
                    self._out.extend(chunk)
                    self._lock.notify_all()
            with self._lock:
                self._eof = True
                self._lock.notify_all()

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()

    def _take_ffmpeg(self) -> bytes:
        with self._lock:
            out = bytes(self._out)
            self._out.clear()
        return out

    @property
    def first_output_due(self) -> bool:
        """Whether enough audio was fed for the encoder's first bytes (ffmpeg: `FFMPEG_FIRST_S`; others: always)."""
        return self._proc is None or self.fed_s >= self.FFMPEG_FIRST_S - 1e-9

    def wait_output(self, timeout_s: float) -> bytes:
        """ffmpeg formats: the bytes ffmpeg has made, waiting up to `timeout_s` for the first (it encodes a chunk a
        few ms after `feed` returned, so the first chunk's bytes would otherwise leave only with the next chunk);
        other formats: b"" (their `feed` returns what it makes)."""
        if self._proc is None:
            return b""
        with self._lock:
            self._lock.wait_for(lambda: bool(self._out) or self._eof, timeout=timeout_s)
        return self._take_ffmpeg()

    def feed(self, wav: np.ndarray) -> bytes:
        """Encode one chunk; returns the bytes ready to send (may be empty for buffering codecs)."""
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        self.fed_s += len(wav) / self.sr
        if self.fmt == "pcm":
            return to_pcm16(wav)
        if self.fmt == "wav":
            head = b"" if self._started else wav_header(self.sr)
            self._started = True
            return head + to_pcm16(wav)
        if self.fmt == "flac":
            self._held.append(wav)
            return b""
        if self._sf is not None:
            self._sf.write(wav)
            self._sf.flush()
            return self._drain.take()
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(to_pcm16(wav))
        self._proc.stdin.flush()
        return self._take_ffmpeg()

    def close(self) -> bytes:
        """Finish the stream; returns the remaining bytes (a WAV with no audio still gets its header)."""
        if self.fmt in ("pcm", "wav"):
            if self.fmt == "wav" and not self._started:
                self._started = True
                return wav_header(self.sr)
            return b""
        if self.fmt == "flac":
            wav = np.concatenate(self._held) if self._held else np.zeros(0, np.float32)
            self._held = []
            return encode(wav, self.sr, "flac")
        if self._sf is not None:
            self._sf.close()
            self._sf = None
            return self._drain.take()
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
            self._reader.join(timeout=60)  # ffmpeg has exited: the pipe is at EOF, the pump ends (slowly on a busy box)
            out = self._take_ffmpeg()
            self._proc = None
            return out
        return b""

    def abort(self) -> None:
        """Release resources without finishing (client went away)."""
        self._held = []
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
            self._proc = None
        if self._sf is not None:
            try:
                self._sf.close()
            except Exception:  # noqa: BLE001 - nothing to deliver anyway
                pass
            self._sf = None


def encode(wav: np.ndarray, sr: int, fmt: str) -> bytes:
    """Encode a whole float32 mono waveform as `fmt` (wav/pcm/mp3/opus/flac/aac) and return the file bytes."""
    fmt = _check(fmt, sr)
    if fmt == "pcm":
        return to_pcm16(wav)
    if fmt == "wav":
        pcm = to_pcm16(wav)
        return wav_header(sr, len(pcm)) + pcm
    if fmt in _SF:
        kind, sub = _SF[fmt]
        buf = io.BytesIO()
        sf.write(buf, np.asarray(wav, dtype=np.float32).reshape(-1), sr, format=kind, subtype=sub)
        return buf.getvalue()
    enc = StreamEncoder(fmt, sr)
    return enc.feed(wav) + enc.close()

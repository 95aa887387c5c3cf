"""Streamed MP3 from LAME inside the server's process (`lameenc`), instead of one ffmpeg process per request.

Why: ffmpeg's MP3 encoder gives nothing for the engine's 1-frame (80 ms) first chunk, so a streamed MP3 response
waited for the second frame step, its window's decode and the pipe hop to ffmpeg and back (H200, 16 HTTP clients:
TTFA p50 65.8 ms against 53.7 ms for pcm; benchmarks/RESULTS.md, serve, 2026-12-04 18:05 UTC). LAME called
directly releases its first two MPEG frames from those 80 ms. The stream is what ffmpeg's libmp3lame made: the same
encoder, CBR 128 kb/s at the input's rate, LAME's default quality (3), no ID3 tag and no Xing/Info frame, so its
first bytes are an MPEG frame. Like every MP3 stream it begins with the encoder's delay (1,105 samples decode as
silence before the first sample fed), in either encoder; the first 80 ms release the frames up to ~2 ms past it,
and the next chunk the rest of the first chunk's audio.
"""

from __future__ import annotations

import numpy as np

from voicepipe.audio.formats import to_pcm16

try:
    import lameenc
except ImportError:  # the server then streams MP3 through ffmpeg (`voicepipe.audio.formats.StreamEncoder`)
    lameenc = None

BITRATE_KBPS = 128  # as `voicepipe.audio.formats` runs ffmpeg's libmp3lame (-b:a 128k)
QUALITY = 3  # LAME's own default, which ffmpeg's libmp3lame keeps when given no compression level
# a chunk of at most this many samples (two engine frames) is encoded on the caller's thread (the event loop):
# ~0.1-0.2 ms, less than a hop to a worker thread and back; a longer one (up to 31 frames, a few ms) goes to a thread
INLINE_MAX_SAMPLES = 2 * 1920


def available() -> bool:
    """Whether LAME can be called in-process (`lameenc` installed)."""
    return lameenc is not None


class LameStream:
    """`feed(float32 chunk) -> bytes`, `close() -> bytes`: the interface of `StreamEncoder` for MP3 through LAME.

    `prime()` runs LAME's one-time set-up (~1 ms of table building) before the first audio arrives; `feed`
    otherwise does it on the first chunk. Not thread-safe: one caller at a time (the route awaits each feed)."""

    fmt = "mp3"
    first_output_due = True  # LAME's bytes come out of `feed` itself: nothing to wait for afterwards

    def __init__(self, sr: int):
        if lameenc is None:
            raise RuntimeError("lameenc is not installed")
        self.sr = sr
        self.fed_s = 0.0
        enc = lameenc.Encoder()
        enc.set_bit_rate(BITRATE_KBPS)
        enc.set_in_sample_rate(sr)
        enc.set_channels(1)
        enc.set_quality(QUALITY)
        self._enc: lameenc.Encoder | None = enc

    def prime(self) -> None:
        """LAME's set-up (`lame_init_params`), done by an empty encode (it returns no bytes)."""
        if self._enc is not None:
            self._enc.encode(b"")

    @staticmethod
    def inline(wav: np.ndarray) -> bool:
        """Whether a chunk is short enough to encode on the event loop (`INLINE_MAX_SAMPLES`)."""
        return np.size(wav) <= INLINE_MAX_SAMPLES

    def feed(self, wav: np.ndarray) -> bytes:
        """Encode one chunk; returns the MP3 bytes LAME released (whole frames as far as its look-ahead allows)."""
        assert self._enc is not None, "stream closed"
        self.fed_s += np.size(wav) / self.sr
        return bytes(self._enc.encode(to_pcm16(wav)))

    def wait_output(self, timeout_s: float) -> bytes:
        """Nothing comes later than `feed` returns (the ffmpeg encoder's wait, for the route's one code path)."""
        return b""

    def close(self) -> bytes:
        """The tail: the frames still in LAME's look-ahead, the last one padded."""
        if self._enc is None:
            return b""
        out, self._enc = bytes(self._enc.flush()), None
        return out

    def abort(self) -> None:
        """Drop the stream (client gone)."""
        self._enc = None

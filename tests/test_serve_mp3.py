"""Streamed MP3 from LAME in the server's process (`voicepipe.serve.mp3`): a stream ffmpeg and libsndfile read, whose
first bytes come from the engine's first 80 ms chunk, holding the audio fed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.test_serve_formats import SR, decode, decode_ffmpeg
from voicepipe.serve import mp3

pytestmark = pytest.mark.skipif(not mp3.available(), reason="lameenc is not installed")
FRAME = 1920  # samples per engine frame (80 ms at 24 kHz)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """A 180 Hz buzz with a slow amplitude envelope and a little noise: content whose timing can be checked."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * env * np.sign(np.sin(2 * np.pi * 180 * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def stream(chunks: list[np.ndarray]) -> tuple[list[bytes], bytes]:
    enc = mp3.LameStream(SR)
    enc.prime()
    outs = [enc.feed(c) for c in chunks]
    return outs, enc.close()


def test_first_chunk_of_one_frame_gives_an_mpeg_frame():
    """80 ms fed (the engine's first chunk) already give bytes, starting with an MPEG frame (no ID3 tag, no Xing
    frame: nothing a player must wait past); ffmpeg's encoder gives none from 80 ms (`StreamEncoder`)."""
    wav = speechlike(0.08)
    outs, _ = stream([wav])
    first = outs[0]
    assert first and first[0] == 0xFF and first[1] & 0xE0 == 0xE0, first[:4]
    assert b"Xing" not in first and b"Info" not in first and not first.startswith(b"ID3")
    if shutil.which("ffmpeg") is not None:
        dec, sr = decode_ffmpeg(first)  # playable on its own
        assert sr == SR and len(dec) > 0


@pytest.mark.parametrize("sizes", [[1, 1, 2, 4, 8, 16, 31, 12], [75]], ids=["the engine's ramp", "whole"])
def test_stream_decodes_to_the_audio_fed(sizes):
    """The joined stream is one MP3 both decoders read; after LAME's encoder delay it is the input (correlation),
    whatever the chunking (the engine's ramp of 1, 1, 2, 4, ... frames, or one piece)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing")
    wav = speechlike(sum(sizes) * FRAME / SR)
    bounds = np.cumsum([0, *sizes]) * FRAME
    outs, tail = stream([wav[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    dec, sr = decode(b"".join(outs) + tail, "mp3", streamed=True)
    assert sr == SR and len(wav) <= len(dec) <= len(wav) + 2400, len(dec)
    # the encoder's delay: where the decoded stream lines up with the input (LAME: 1,105 samples; found, not assumed)
    lag = max(range(0, 2000), key=lambda d: float(np.dot(dec[d : d + 12000], wav[:12000])))
    seg = dec[lag : lag + len(wav)]
    assert float(np.corrcoef(seg, wav[: len(seg)])[0, 1]) > 0.95


def test_same_bytes_however_the_audio_is_chunked():
    """LAME's output depends on the samples only, not on how they were handed over (the first chunk's bytes are
    the start of the one-piece stream)."""
    wav = speechlike(1.0, seed=1)
    outs, tail = stream([wav[:FRAME], wav[FRAME : 2 * FRAME], wav[2 * FRAME :]])
    whole, whole_tail = stream([wav])
    assert b"".join(outs) + tail == whole[0] + whole_tail
    assert whole[0].startswith(outs[0])

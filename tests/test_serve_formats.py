"""Audio encodings of the speech API decode back to the audio they were given (whole and streamed)."""

from __future__ import annotations

import io
import shutil
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from voicepipe.audio.formats import FORMATS, STREAMABLE, StreamEncoder, encode
from voicepipe.errors import InputError

SR = 24000


def tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def decode_ffmpeg(data: bytes) -> tuple[np.ndarray, int]:
    out = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac",
                          "1", "-ar", str(SR), "pipe:1"], input=data, capture_output=True, check=True).stdout
    return np.frombuffer(out, "<i2").astype(np.float32) / 32767, SR


def decode_libsndfile(data: bytes) -> tuple[np.ndarray, int]:
    """What `soundfile.read` (most Python clients) makes of the bytes, unpatched."""
    wav, sr = sf.read(io.BytesIO(data), dtype="float32")
    return wav, sr


def decode(data: bytes, fmt: str, streamed: bool = False) -> tuple[np.ndarray, int]:
    """Decode as a client would, and check that the other decoder agrees: libsndfile and ffmpeg for every format
    (AAC: ffmpeg only, libsndfile has no AAC decoder). `streamed` is kept for callers; the bytes must decode the
    same either way."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32767, SR
    wav, sr = decode_ffmpeg(data)
    if fmt != "aac":
        wav2, sr2 = decode_libsndfile(data)
        assert sr2 == sr and abs(len(wav2) - len(wav)) <= int(0.1 * SR), (fmt, len(wav2), len(wav))
        if fmt in ("wav", "flac"):
            wav = wav2
    return wav, sr


def _check_same(wav: np.ndarray, sr: int, ref: np.ndarray, fmt: str) -> None:
    assert sr == SR
    # lossy codecs add priming/padding: length within 0.1 s, energy near the original
    assert abs(len(wav) - len(ref)) <= (0 if fmt in ("wav", "pcm", "flac") else int(0.1 * SR)), (fmt, len(wav))
    rms, ref_rms = float(np.sqrt(np.mean(wav**2))), float(np.sqrt(np.mean(ref**2)))
    assert abs(rms - ref_rms) < 0.1 * ref_rms, (fmt, rms, ref_rms)


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_decodes_back(fmt):
    if fmt == "aac" and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing")
    ref = tone()
    wav, sr = decode(encode(ref, SR, fmt), fmt)
    _check_same(wav, sr, ref, fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_encoder_emits_as_it_goes_and_decodes(fmt):
    ref = tone(2.0)
    enc = StreamEncoder(fmt, SR)
    pieces = []
    for c in np.array_split(ref, 10):  # 0.2 s chunks, arriving about as fast as a GPU makes them
        pieces.append(enc.feed(c))
        time.sleep(0.1)
    tail = enc.close()
    if fmt in STREAMABLE:
        assert sum(1 for p in pieces if p) >= 2, f"{fmt}: encoder held everything back"
    else:  # FLAC: held, then one whole file with its length (a streamed FLAC has none: libsndfile refuses it)
        assert not any(pieces) and sf.info(io.BytesIO(tail)).frames == len(ref)
    wav, sr = decode(b"".join(pieces) + tail, fmt, streamed=True)
    _check_same(wav, sr, ref, fmt)


def test_streamed_wav_reads_unpatched():
    """A streamed WAV (unknown-length header) is read by libsndfile as it arrives, with every sample."""
    enc = StreamEncoder("wav", SR)
    data = b"".join(enc.feed(c) for c in np.array_split(tone(1.0), 5)) + enc.close()
    assert data[4:8] == b"\xff\xff\xff\xff"
    wav, _ = decode_libsndfile(data)
    assert len(wav) == SR


def test_unsupported_format_and_opus_rate_rejected():
    with pytest.raises(InputError, match="response_format 'ogg'"):
        encode(tone(), SR, "ogg")
    with pytest.raises(InputError, match="opus needs"):
        StreamEncoder("opus", 22050)


def test_pcm_is_s16le_and_clipped():
    data = encode(np.array([0.0, 1.0, -1.0, 2.0], np.float32), SR, "pcm")
    assert np.frombuffer(data, "<i2").tolist() == [0, 32767, -32767, 32767]


@pytest.mark.parametrize("fmt", ["mp3", "aac"])
def test_first_streamed_chunk_can_leave_before_the_next_arrives(fmt):
    """ffmpeg encodes a few ms after `feed` returns: `wait_output` hands over the first chunk's own frames (the
    server then sends them at once instead of with the next chunk). MP3 starts with a frame, not an ID3 tag."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg missing")
    enc = StreamEncoder(fmt, SR)
    first = enc.feed(tone(0.08))  # the engine's first chunk: 1 frame, 80 ms: too little for a first frame
    assert not enc.first_output_due
    first += enc.feed(tone(0.08))  # its second chunk
    assert enc.first_output_due and StreamEncoder.FFMPEG_FIRST_S == 0.16
    first += enc.wait_output(2.0)
    assert first, f"{fmt}: nothing encoded from the first chunk"
    assert first[0] == 0xFF and first[1] & 0xE0 == 0xE0, first[:4]  # MPEG / ADTS frame sync, no tag before it
    rest = enc.close()
    wav, _ = decode_ffmpeg(first + rest)
    # all of it, plus the codec's priming/padding (no gapless header in a stream): measured 1,344 (MP3), 1,280 (AAC)
    assert int(0.16 * SR) <= len(wav) < int(0.16 * SR) + 2048, len(wav)
    pcm = StreamEncoder("pcm", SR)
    assert pcm.first_output_due and pcm.wait_output(0.5) == b""

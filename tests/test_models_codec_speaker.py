"""The 12 Hz codec (tiny, real class) and the resemblyzer speaker encoder (real weights from its wheel)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from voicepipe.errors import InputError
from voicepipe.models import load_codec, load_speaker_encoder
from voicepipe.models.tiny import FRAME_SAMPLES, SAMPLE_RATE, voiced_tone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_codec_roundtrip_shapes(tiny_tts_dir: Path):
    from qwen_tts import Qwen3TTSTokenizer

    codec = load_codec(tiny_tts_dir)  # a TTS dir: its speech_tokenizer/ is used
    assert isinstance(codec, Qwen3TTSTokenizer)
    codec2 = load_codec(tiny_tts_dir / "speech_tokenizer")
    assert codec2.model.config.to_dict() == codec.model.config.to_dict()

    enc = codec.encode(voiced_tone(1.0), sr=SAMPLE_RATE)
    codes = enc.audio_codes[0]
    assert tuple(codes.shape) == (13, 16)  # ceil(24000 / 1920) frames x 16 codebooks
    assert int(codes.min()) >= 0 and int(codes.max()) < 2048
    wavs, sr = codec.decode(enc)
    assert sr == SAMPLE_RATE and wavs[0].shape == (13 * FRAME_SAMPLES,) and np.isfinite(wavs[0]).all()
    # random weights, but audible and code-dependent (zero-initialized codebooks would decode to exact silence)
    assert 0.01 < float(np.sqrt(np.mean(wavs[0] ** 2))) < 0.5
    assert len({int(c) for c in codes[:, 0]}) > 1
    shifted, _ = codec.decode([{"audio_codes": (codes + 1) % 2048}])
    assert np.sqrt(np.mean((shifted[0] - wavs[0]) ** 2)) > 0.01
    # the codec resamples other rates itself: 48 kHz in -> same number of frames
    enc48 = codec.encode(np.repeat(voiced_tone(1.0), 2), sr=48000)
    assert tuple(enc48.audio_codes[0].shape) == (13, 16)


@pytest.fixture(scope="module")
def encoder():
    return load_speaker_encoder()


def test_speaker_encoder_is_normalized_and_deterministic(encoder):
    wav = voiced_tone(2.0)
    a = encoder.embed(wav, SAMPLE_RATE)
    assert a.shape == (encoder.dim,) and a.dtype == np.float32
    assert abs(float(np.linalg.norm(a)) - 1.0) < 1e-5
    assert np.allclose(a, encoder.embed(wav, SAMPLE_RATE), atol=1e-6)
    with pytest.raises(InputError, match="0.1 s"):
        encoder.embed(np.zeros(10, np.float32), SAMPLE_RATE)
    with pytest.raises(InputError, match="silent"):
        encoder.embed(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)


def _espeak(text: str, voice: str, path: Path) -> np.ndarray:
    import soundfile as sf

    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    wav, sr = sf.read(path, dtype="float32")
    return wav, sr


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_speaker_encoder_separates_voices(encoder, tmp_path: Path):
    a1 = encoder.embed(*_espeak("The quick brown fox jumps over the lazy dog.", "en-us", tmp_path / "a1.wav"))
    a2 = encoder.embed(*_espeak("She said she would be here by noon today.", "en-us", tmp_path / "a2.wav"))
    b1 = encoder.embed(*_espeak("The quick brown fox jumps over the lazy dog.", "en-us+f3", tmp_path / "b1.wav"))
    same, different = float(a1 @ a2), float(a1 @ b1)
    assert same > different + 0.1, (same, different)


def test_codec_falls_back_to_base_models_speech_tokenizer(tiny_tts_dir: Path, tmp_path: Path):
    from voicepipe.config import load_settings

    settings = load_settings(offline=True, models_dir=tmp_path)
    shutil.copytree(tiny_tts_dir, tmp_path / "Qwen3-TTS-12Hz-1.7B-Base")  # only the base model is present
    codec = load_codec(settings=settings)
    assert codec.model.config.encoder_valid_num_quantizers == 16

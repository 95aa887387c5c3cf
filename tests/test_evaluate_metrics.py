"""Evaluation metrics on constructed signals and real (espeak-ng) speech, with real detectors and models."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from voicepipe.evaluate import metrics as M

SR = 24000
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


def espeak(tmp: Path, text: str, voice: str = "en-us+f2", speed: int = 150) -> np.ndarray:
    """Real synthetic speech from espeak-ng, resampled to 24 kHz."""
    import librosa

    out = tmp / f"{abs(hash((text, voice, speed)))}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True)
    wav, _ = librosa.load(out, sr=SR, mono=True)
    return wav.astype(np.float32)


SENT = "Please call me when you arrive at the station tomorrow morning."


@needs_espeak
def test_real_speech_is_valid(tmp_path: Path) -> None:
    wav = espeak(tmp_path, SENT)
    v = M.check_audio(wav, SR, SENT)
    assert v.valid, v.reasons
    assert v.measures["vad_fraction"] > 0.5
    assert v.measures["flatness"] < 0.1


def test_silence_noise_tone_nan_are_invalid() -> None:
    rng = np.random.default_rng(0)
    n = SR * 3
    silence = np.zeros(n, np.float32)
    near_silence = (rng.standard_normal(n) * 1e-4).astype(np.float32)
    white = (rng.standard_normal(n) * 0.1).astype(np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / SR)).astype(np.float32)
    brown = (np.cumsum(rng.standard_normal(n)) * 1e-3).astype(np.float32)  # passes flatness; VAD catches it
    nan = white.copy()
    nan[100] = np.nan

    assert "silence" in M.check_audio(silence, SR).reasons[0]
    assert "silence" in M.check_audio(near_silence, SR).reasons[0]
    r = " ".join(M.check_audio(white, SR).reasons)
    assert "noise-like spectrum" in r and "no speech detected" in r
    assert "no speech modulation" in " ".join(M.check_audio(tone, SR).reasons)
    assert "no speech detected" in " ".join(M.check_audio(brown, SR).reasons)
    assert "non-finite" in M.check_audio(nan, SR).reasons[0]
    assert M.check_audio(np.zeros(0, np.float32), SR).reasons == ["empty audio"]


@needs_espeak
def test_duration_must_fit_the_text(tmp_path: Path) -> None:
    short = espeak(tmp_path, "Hello there.")
    long_text = SENT * 3
    assert "too short for the text" in " ".join(M.check_audio(short, SR, long_text).reasons)
    padded = np.concatenate([short, espeak(tmp_path, "Hello there, hello there, hello there, hello there.")] * 3)
    assert "too long for the text" in " ".join(M.check_audio(padded, SR, "Hi.").reasons)


def test_code_degeneracy_detectors() -> None:
    rng = np.random.default_rng(0)
    healthy = rng.integers(0, 2048, size=(120, 16))
    assert M.check_codes(healthy).valid

    stuck = healthy.copy()
    stuck[30:80, 0] = 7
    assert "stuck codes (50 identical frames" in M.check_codes(stuck).reasons[0]

    loop = healthy.copy()
    loop[10:110, 0] = np.tile([5, 9, 11], 40)[:100]
    v = M.check_codes(loop)
    assert v.reasons and "looping codes (period 3" in v.reasons[0], v.reasons

    short_loop = healthy.copy()
    short_loop[10:30, 0] = np.tile([5, 9], 10)  # 1.6 s of a pattern: speech-like repetition, allowed
    assert M.check_codes(short_loop).valid

    assert M.check_codes(np.zeros((0, 16), int)).reasons == ["no codec frames generated"]
    assert M.check_codes(np.full((40, 16), np.nan)).reasons == ["non-finite codes"]


def test_text_normalisation_and_wer() -> None:
    assert M.normalize_text("  Wait... did you HEAR that?! I didn't.") == "wait did you hear that i didn't"
    assert M.normalize_text("\u201cNever,\u201d he said \u2014 laughing.") == "never he said laughing"
    wer, cer = M.wer_cer(["Hello, world!", "Yes."], ["hello world", "yes"])
    assert wer == 0.0 and cer == 0.0
    wer, cer = M.wer_cer(["the cat sat"], ["the cat"])
    assert wer == pytest.approx(1 / 3)
    assert 0 < cer < 1
    assert math.isnan(M.wer_cer([""], ["x"])[0])


@needs_espeak
def test_pocketsphinx_transcribes_real_speech_not_noise(tmp_path: Path) -> None:
    from voicepipe.evaluate.asr import PocketSphinxAsr

    asr = PocketSphinxAsr()
    text = "The weather is nice today. Please call me when you arrive at the station."
    hyp = asr.transcribe(espeak(tmp_path, text, speed=130), SR)
    wer, _ = M.wer_cer([text], [hyp])
    noise = (np.random.default_rng(1).standard_normal(SR * 4) * 0.1).astype(np.float32)
    wer_noise, _ = M.wer_cer([text], [asr.transcribe(noise, SR)])
    assert wer < 0.35, hyp
    assert wer_noise > 0.8


@needs_espeak
def test_dnsmos_scores_speech_above_noise(tmp_path: Path) -> None:
    assert M.mos_backend() == "dnsmos"
    speech = M.predict_mos(espeak(tmp_path, SENT), SR)
    noise = M.predict_mos((np.random.default_rng(2).standard_normal(SR * 3) * 0.1).astype(np.float32), SR)
    assert speech is not None and noise is not None
    assert set(speech) == {"ovrl", "sig", "bak", "p808"}
    assert speech["ovrl"] > noise["ovrl"] + 0.5
    assert M.predict_mos(np.zeros(SR, np.float32), SR) is None


def test_mos_windows_hear_every_sample_once_or_repeat_a_short_clip() -> None:
    n = int(M.MOS_WINDOW_S * 16000)
    x = np.arange(int(20.5 * 16000), dtype=np.float32)
    wins = M.mos_windows(x)
    assert [len(w) for w in wins] == [n, n, n]  # 0-9.01, 9.01-18.02, then the last 9.01 s (ending at the end)
    assert wins[0][0] == 0 and wins[1][0] == n and wins[-1][-1] == x[-1]
    assert len(np.unique(np.concatenate(wins))) == len(x)  # every sample heard
    short = np.arange(16000 * 2, dtype=np.float32)
    (w,) = M.mos_windows(short)
    assert len(w) == n and np.array_equal(w[: len(short)], short) and w[len(short)] == 0  # repeated, as DNSMOS does
    assert len(M.mos_windows(np.ones(n, np.float32))) == 1


@needs_espeak
def test_dnsmos_of_a_long_clip_is_the_mean_of_its_windows(tmp_path: Path) -> None:
    """Speech repeated past two windows: one model call per 9.01 s window, the same scale as one window's."""
    one = M.predict_mos(espeak(tmp_path, SENT), SR)
    speech = M.predict_mos(np.tile(espeak(tmp_path, SENT), 6), SR)
    assert one is not None and speech is not None
    assert abs(speech["ovrl"] - one["ovrl"]) < 0.5, (one, speech)


@needs_espeak
def test_target_recording_is_more_similar_than_another_voice(tmp_path: Path) -> None:
    """resemblyzer's real weights: a new recording of the target beats another voice against held-out clips."""
    from voicepipe.models import load_speaker_encoder

    enc = load_speaker_encoder()
    target, other = "en-us+m3", "en-gb+f3"
    held_out = [
        "This is a clean recording of my voice for enrollment purposes.",
        "The quick brown fox jumps over the lazy dog near the river bank.",
        "We measured every panel twice, once in the morning and once at noon.",
    ]
    cen = M.centroid([M.embed_speaker(enc, espeak(tmp_path, t, target), SR) for t in held_out])
    probe = "Keep an eye on the temperature of the terminals before you blame the battery."
    sim_target = M.cosine(M.embed_speaker(enc, espeak(tmp_path, probe, target), SR), cen)
    sim_other = M.cosine(M.embed_speaker(enc, espeak(tmp_path, probe, other), SR), cen)
    assert sim_target > sim_other + 0.03, (sim_target, sim_other)
    assert sim_target > 0.9
    assert M.embed_speaker(enc, np.zeros(SR, np.float32), SR) is None


def test_rtf() -> None:
    assert M.rtf(2.0, 4.0) == 0.5
    assert M.rtf(1.0, 0.0) == math.inf


def test_asr_backends_load_through_the_production_path(tiny_whisper_dir: Path, monkeypatch) -> None:
    """Whisper loads from a local dir via transformers (tiny random weights: the text is junk, the path is real);
    `auto` without local Whisper files falls back to PocketSphinx; an unknown backend is a clear error."""
    from voicepipe.errors import ModelError
    from voicepipe.evaluate.asr import PocketSphinxAsr, WhisperAsr, load_asr

    asr = load_asr(str(tiny_whisper_dir))
    assert isinstance(asr, WhisperAsr)
    tone = (0.1 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)).astype(np.float32)
    assert isinstance(asr.transcribe(tone, SR), str)
    monkeypatch.setenv("VOICEPIPE_MODELS_DIR", str(tiny_whisper_dir.parent / "no-such-models"))
    assert isinstance(load_asr("auto"), PocketSphinxAsr)
    with pytest.raises(ModelError, match="not available offline"):
        load_asr("whisper")
    with pytest.raises(ModelError, match="unknown"):
        load_asr("kaldi")

